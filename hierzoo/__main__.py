from hierzoo.cli import main

raise SystemExit(main())
