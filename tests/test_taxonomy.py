from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_taxonomy

from hierzoo import Taxonomy, TaxonomyError, bundled_taxonomies, load_taxonomy

# nodes per level as the data README lists them (counted by name; see the artifact note below)
README_LEVEL_SIZES = {
    "cub200": [13, 37, 124, 200],
    "inat21-animal": [1, 6, 27, 152, 715, 2988, 5388],
    "inat21-plant": [1, 5, 14, 85, 286, 1702, 4271],
    "imagenet-animal": [1, 2, 10, 37, 81, 123, 81, 65, 41, 64, 34, 2],
    "imagenet-artifact": [1, 5, 40, 149, 205, 162, 62, 44],
    "food101": [1, 6, 29, 40, 24],
    "oxford-pets": [1, 1, 1, 1, 2, 2, 37],
}
LEAVES = {
    "cub200": 200,
    "inat21-animal": 5388,
    "inat21-plant": 4271,
    "imagenet-animal": 397,
    "imagenet-artifact": 494,
    "food101": 84,
    "oxford-pets": 37,
}


@pytest.mark.parametrize("name", bundled_taxonomies())
def test_bundled_taxonomies_load(name):
    tax = load_taxonomy(name)
    assert tax.n_leaves == LEAVES[name]
    distinct_names = [
        len({tax.names[i].lower() for i in tax.level_nodes(k)}) for k in range(tax.depth)
    ]
    assert distinct_names == README_LEVEL_SIZES[name]
    # every leaf's path row walks up the parent links to the top
    for row in range(0, tax.n_leaves, max(1, tax.n_leaves // 50)):
        ids = tax.paths[row][tax.paths[row] >= 0].tolist()
        assert ids == tax.ancestors(int(tax.leaf_ids[row]))
        assert [int(tax.level[i]) for i in ids] == list(range(len(ids)))
    assert (tax.paths >= 0).sum(1).tolist() == tax.leaf_depth.tolist()
    assert (tax.level_offsets[1:] - tax.level_offsets[:-1]).tolist() == tax.level_sizes
    assert (tax.ranks is None) == name.startswith(("imagenet", "food"))
    assert tax.ranks is None or len(tax.ranks) == tax.depth


def test_ranks_of_the_bundled_taxonomies():
    assert load_taxonomy("cub200").ranks == ("order", "family", "genus", "species")
    assert load_taxonomy("inat21-plant").ranks[0] == "kingdom"
    assert load_taxonomy("food101").ranks is None


def test_variable_depth_paths_are_padded():
    tax = load_taxonomy("imagenet-animal")
    assert tax.depth == 12
    assert sorted(set(tax.leaf_depth.tolist())) == list(range(4, 13))
    short = int(np.argmin(tax.leaf_depth))
    assert (tax.paths[short, tax.leaf_depth[short] :] == -1).all()


def test_a_name_under_two_parents_is_two_nodes():
    tax = load_taxonomy("imagenet-artifact")
    ids = tax.find("Sports Equipment")
    assert len(ids) == 2 and len({int(tax.parent[i]) for i in ids}) == 2
    assert tax.level_sizes[3] == 150
    with pytest.raises(TaxonomyError, match="ambiguous.*implement > sports equipment"):
        tax.node("sports equipment")
    by_path = tax.node("artifact > instrumentality > equipment > sports equipment")
    assert tax.names[tax.parent[by_path]] == "equipment"
    assert tax.node(["artifact", "instrumentality", "implement", "sports equipment"]) in ids


def test_a_name_at_two_depths_is_two_nodes():
    tax = load_taxonomy("cub200")
    genus, species = sorted(tax.find("sayornis"), key=lambda i: tax.level[i])
    assert (tax.level[genus], tax.level[species]) == (2, 3)
    assert tax.parent[species] == genus
    assert tax.node("Sayornis", level=3) == species


def test_a_key_that_differs_from_its_path_and_case():
    tax = load_taxonomy("cub200")
    row = tax.leaf_index("Nelson's Sharp-tailed Sparrow")
    assert tax.labels[row] == "Nelson's Sharp-tailed Sparrow"
    assert tax.names[tax.leaf_ids[row]] == "Nelson's sharp-tailed Sparrow"
    assert tax.leaf_index("NELSON'S SHARP-TAILED SPARROW") == row
    assert tax.node("passeriformes") == tax.node("Passeriformes")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(TaxonomyError, match="Closest names.*passeriformes"):
        load_taxonomy("cub200").node("Paseriformes")
    with pytest.raises(TaxonomyError, match="did you mean.*cub200"):
        load_taxonomy("cub2000")


def test_children_and_restriction():
    tax = load_taxonomy("inat21-animal")
    insects = tax.restrict("Insecta")
    assert insects.ranks == tax.ranks
    assert insects.level_sizes[:3] == [1, 1, 1]
    leaf_rows = [tax.leaf_index(lab) for lab in insects.labels]
    cls = tax.node("Insecta")
    assert all(tax.paths[r, 2] == cls for r in leaf_rows)
    assert insects.n_leaves == int((tax.paths[:, 2] == cls).sum())
    cub = load_taxonomy("cub200")
    some = cub.restrict(leaves=["Laysan Albatross", "sooty albatross"])
    assert some.n_leaves == 2 and some.level_sizes == [1, 1, 2, 2]
    fam = cub.node("Diomedeidae")
    assert {cub.names[c] for c in cub.children(fam)} == {"Phoebastria", "Phoebetria"}
    assert cub.restrict("Procellariiformes > Diomedeidae").n_leaves == 3


def test_csv_tree_and_parents_formats(tmp_path):
    csv_file = tmp_path / "birds.csv"
    csv_file.write_text(
        "kingdom,class,order,species\n"
        "Animalia,Aves,Passeriformes,Corvus corax\n"
        "Animalia,Aves,Passeriformes,Pica pica\n"
        "Animalia,Mammalia,Carnivora,Vulpes vulpes\n"
        "Animalia,Mammalia,Carnivora,Vulpes vulpes\n"
    )
    tax = load_taxonomy(csv_file)
    assert tax.ranks == ("kingdom", "class", "order", "species")
    assert tax.level_sizes == [1, 2, 2, 3]
    tree = tmp_path / "tree.json"
    tree.write_text(
        json.dumps(
            {
                "Animalia": {
                    "Aves": {"Passeriformes": ["Corvus corax", "Pica pica"]},
                    "Mammalia": {"Carnivora": ["Vulpes vulpes"]},
                }
            }
        )
    )
    assert load_taxonomy(tree).to_paths() == tax.to_paths()
    parents = tmp_path / "parents.json"
    parents.write_text(
        json.dumps(
            {
                "Animalia": None,
                "Aves": "Animalia",
                "Mammalia": "Animalia",
                "Passeriformes": "Aves",
                "Carnivora": "Mammalia",
                "Corvus corax": "Passeriformes",
                "Pica pica": "Passeriformes",
                "Vulpes vulpes": "Carnivora",
            }
        )
    )
    assert load_taxonomy(parents).to_paths() == tax.to_paths()
    one_level_tree = tmp_path / "groups.json"
    one_level_tree.write_text(
        json.dumps({"Aves": ["Corvus corax", "Pica pica"], "Mammalia": ["Vulpes vulpes"]})
    )
    assert load_taxonomy(one_level_tree).level_sizes == [2, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"a": ["x", "", "a"]}, "empty or non-string node name ''"),
        ({"a": "x > a"}, "Expected the path of 'a'"),
        ({"a": ["x", 3, "a"]}, "non-string node name 3"),
        ({"a": ["x", "y", "a"], "b": ["x", "y", "a", "b"]}, "also an inner node"),
        ({"a": ["x", "a"], "A": ["z", "a"]}, "listed twice with different paths"),
    ],
)
def test_bad_taxonomy_files_name_the_entry(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(content))
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(f, format="paths")


def test_an_empty_object_or_a_folder_is_not_a_taxonomy_file(tmp_path):
    f = tmp_path / "empty.json"
    f.write_text("{}")
    with pytest.raises(TaxonomyError, match=r"holds an empty JSON object; expected a JSON object"):
        load_taxonomy(f)
    with pytest.raises(TaxonomyError, match=r"is a folder; give a bundled name or a taxonomy"):
        load_taxonomy(tmp_path)
    f.write_text(json.dumps({"a": ["x", "y", "a"]}))
    assert load_taxonomy(f, ranks=["k", "o", "s"]).ranks == ("k", "o", "s")
    for ranks in ("kos", ["k", 2, "s"]):
        with pytest.raises(TaxonomyError, match=r"rank names as a list of strings"):
            load_taxonomy(f, ranks=ranks)


def test_paths_keyed_by_ids_are_read_as_paths(tmp_path):
    """Leaf -> path with keys that are ids, not the leaves' names: the paths share their top
    nodes, which a one-level tree's leaf lists do not, so they are read as paths."""
    f = tmp_path / "ids.json"
    f.write_text(
        json.dumps(
            {
                "1": ["Aves", "Corvidae", "Corvus corax"],
                "2": ["Aves", "Corvidae", "Pica pica"],
                "3": ["Mammalia", "Canidae", "Vulpes vulpes"],
                "4": ["Mammalia", "Canidae", "Canis lupus"],
            }
        )
    )
    tax = load_taxonomy(f)
    assert tax.depth == 3 and tax.level_sizes == [2, 2, 4]
    assert tax.to_paths() == load_taxonomy(f, format="paths").to_paths()
    tree = tmp_path / "groups.json"
    tree.write_text(json.dumps({"Aves": ["Corvus corax", "Pica pica"], "Mammalia": ["Vulpes"]}))
    assert load_taxonomy(tree).level_sizes == [2, 3]


def test_duplicate_keys_cycles_and_bad_csv(tmp_path):
    f = tmp_path / "dup.json"
    f.write_text('{"a": ["x", "a"], "b": ["x", "b"], "a": ["y", "a"]}')
    with pytest.raises(TaxonomyError, match="Key 'a' appears twice"):
        load_taxonomy(f)
    cyc = tmp_path / "cycle.json"
    cyc.write_text(json.dumps({"root": None, "a": "b", "b": "c", "c": "a", "leaf": "a"}))
    with pytest.raises(TaxonomyError, match="cycle"):
        load_taxonomy(cyc)
    orphan = tmp_path / "orphan.json"
    orphan.write_text(json.dumps({"a": None, "b": "zzz"}))
    with pytest.raises(TaxonomyError, match="parent 'zzz'"):
        load_taxonomy(orphan)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("order,family,species\nA,,s1\n")
    with pytest.raises(TaxonomyError, match=r"bad.csv:2: .*empty name"):
        load_taxonomy(bad_csv)
    two_paths = tmp_path / "two.csv"
    two_paths.write_text("order,species\nA,s1\nB,s1\n")
    with pytest.raises(TaxonomyError, match=r"two.csv:3: leaf 's1' is listed again"):
        load_taxonomy(two_paths)
    notjson = tmp_path / "x.json"
    notjson.write_text("[1, 2]")
    with pytest.raises(TaxonomyError, match="expected a JSON object"):
        load_taxonomy(notjson)


@pytest.mark.parametrize("seed", range(5))
def test_random_taxonomies_are_consistent(seed):
    tax = random_taxonomy(seed, n_leaves=50, min_depth=1, max_depth=7)
    assert sum(tax.level_sizes) == tax.n_nodes
    for nid in range(tax.n_nodes):
        for c in tax.children(nid):
            assert tax.parent[c] == nid and tax.level[c] == tax.level[nid] + 1
    assert tax.is_leaf.sum() == tax.n_leaves
    again = Taxonomy.from_paths(tax.to_paths())
    assert again.names == tax.names and (again.paths == tax.paths).all()


def test_import_stays_light():
    code = (
        "import sys, hierzoo, hierzoo.metrics, hierzoo.tasks; "
        "print(sorted(m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The Oxford-IIIT Pet Dataset's class list: its 37 image-file-name stems, in class-id order, and
# the 12 cats (the stems the dataset writes with a capital letter).
PET_STEMS = [
    "abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "bengal",
    "birman",
    "bombay",
    "boxer",
    "british_shorthair",
    "chihuahua",
    "egyptian_mau",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "maine_coon",
    "miniature_pinscher",
    "newfoundland",
    "persian",
    "pomeranian",
    "pug",
    "ragdoll",
    "russian_blue",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "siamese",
    "sphynx",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
]
PET_CATS = [
    "Abyssinian",
    "Bengal",
    "Birman",
    "Bombay",
    "British_Shorthair",
    "Egyptian_Mau",
    "Maine_Coon",
    "Persian",
    "Ragdoll",
    "Russian_Blue",
    "Siamese",
    "Sphynx",
]


def _pet_file_form(stem):
    return {c.lower(): c for c in PET_CATS}.get(stem, stem)


def test_oxford_pets_breeds_under_their_lineage():
    tax = load_taxonomy("oxford-pets")
    assert tax.ranks == ("kingdom", "phylum", "class", "order", "family", "species", "breed")
    readable = [" ".join(w.capitalize() for w in s.split("_")) for s in PET_STEMS]
    assert list(tax.labels) == readable == tax.leaves  # class-id order
    assert {"Abyssinian", "American Bulldog", "Yorkshire Terrier"} <= set(tax.labels)
    top = ["Animalia", "Chordata", "Mammalia", "Carnivora"]
    cats = {c.lower() for c in PET_CATS}
    for stem, name in zip(PET_STEMS, readable):
        lineage = ["Felidae", "Felis catus"] if stem in cats else ["Canidae", "Canis familiaris"]
        assert tax.path_names(tax.node(name, level=6)) == top + lineage + [name]
    species = tax.paths[:, 5]
    assert (species == tax.node("Felis catus")).sum() == 12
    assert (species == tax.node("Canis familiaris")).sum() == 25
    assert "oxford-pets" in bundled_taxonomies()
    assert "not public" in tax.source and "hierzoo" in tax.source


def test_oxford_pets_file_names_are_synonyms_everywhere():
    from hierzoo.metrics import encode

    tax = load_taxonomy("oxford-pets")
    for row, stem in enumerate(PET_STEMS):
        form = _pet_file_form(stem)
        leaf = int(tax.leaf_ids[row])
        assert tax.leaf_index(form) == row
        assert tax.node(form) == leaf and tax.node(form, level=6) == leaf
        assert tax.find(form) == [leaf] and tax.find(form, level=6) == [leaf]
    assert tax.synonyms["British_Shorthair"] == tax.node("British Shorthair")
    assert tax.find("american_bulldog", level=5) == []
    # metrics encode names through the taxonomy: a file-name form scores as the breed
    truth = [list(tax.path_names(int(i))) for i in tax.leaf_ids[:3]]
    pred = [p[:-1] + [_pet_file_form(s)] for p, s in zip(truth, PET_STEMS)]
    p, t, _ = encode(pred, truth, taxonomy=tax)
    assert (p == t).all()
    restricted = tax.restrict("Canidae")
    assert restricted.n_leaves == 25 and restricted.leaf_index(
        "shiba_inu"
    ) == restricted.leaf_index("Shiba Inu")
    assert "Maine_Coon" not in restricted.synonyms


def test_synonyms_in_a_taxonomy_file(tmp_path):
    f = tmp_path / "birds.json"
    content = {
        "paths": {"Corvus corax": ["Aves", "Corvus corax"], "Pica pica": ["Aves", "Pica pica"]},
        "synonyms": {
            "common raven": "Corvus corax",
            "birds": "Aves",
            "magpie": ["Aves", "Pica pica"],
        },
    }
    f.write_text(json.dumps(content))
    tax = load_taxonomy(f)
    assert tax.leaf_index("Common Raven") == 0 and tax.node("birds") == tax.node("Aves")
    assert tax.leaf_index("magpie") == 1 and tax.find("magpie", level=0) == []
    bad = [
        ({"raven": "Corvus"}, "Synonym 'raven'.*No node named 'Corvus'"),
        ({"pica pica": "Corvus corax"}, "Synonym 'pica pica'.*already the name of.*Pica pica"),
        ({"": "Aves"}, "non-empty string"),
        (["raven"], "Expected `synonyms` to be an object"),
    ]
    for synonyms, message in bad:
        f.write_text(json.dumps({**content, "synonyms": synonyms}))
        with pytest.raises(TaxonomyError, match=message):
            load_taxonomy(f)
    with pytest.raises(TaxonomyError, match="Synonym 'X'.*two nodes"):
        Taxonomy.from_paths({"a": ["r", "a"], "b": ["r", "b"]}, synonyms={"x": "a", "X": "b"})


def test_the_taxonomy_command_lists_oxford_pets(capsys):
    from hierzoo.cli import main

    assert main(["taxonomy"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "oxford-pets" in line]
    assert len(rows) == 1 and "1 / 1 / 1 / 1 / 2 / 2 / 37" in rows[0] and " 37 " in rows[0]


# --------------------------------------------------------------------------- describing one
def test_describe_names_shape_ranks_and_source():
    text = load_taxonomy("cub200").describe()
    lines = text.splitlines()
    assert lines[0] == "cub200"
    assert "leaves: 200" in text and "depth: 4 levels" in text
    assert "hierarchy_CUB200.json" in text and "the paper's" in text
    level_rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [(r[0], r[1], r[2]) for r in level_rows] == [
        ("1", "order", "13"),
        ("2", "family", "37"),
        ("3", "genus", "124"),
        ("4", "species", "200"),
    ]
    wordnet = load_taxonomy("imagenet-animal").describe()
    assert "depth: 12 levels (leaves at depth 4 to 12)" in wordnet and "ranks: none" in wordnet
    pets = load_taxonomy("oxford-pets").describe()
    assert "synonyms: 19" in pets and "not public" in pets


def _tree_reference(tax, max_depth=None):
    """The tree written the obvious way: recursion over children, leaves counted by walking."""
    lines = []

    def n_leaves(node):
        kids = tax.children(node)
        return 1 if not kids else sum(n_leaves(c) for c in kids)

    def walk(node, depth):
        kids = tax.children(node)
        cut = max_depth is not None and depth + 1 >= max_depth and kids
        note = f"  ({n_leaves(node)} leaves)" if kids else ""
        lines.append("  " * depth + tax.names[node] + note)
        if not cut:
            for c in kids:
                walk(c, depth + 1)

    for r in tax.roots:
        walk(r, 0)
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_depth", [None, 1, 3])
def test_format_tree_equals_the_obvious_walk(seed, max_depth):
    tax = random_taxonomy(seed, n_leaves=40, min_depth=1, max_depth=6)
    assert tax.format_tree(max_depth=max_depth) == _tree_reference(tax, max_depth)


def test_format_tree_of_oxford_pets():
    tax = load_taxonomy("oxford-pets")
    lines = tax.format_tree().splitlines()
    assert lines[:8] == [
        "Animalia  (37 leaves)",
        "  Chordata  (37 leaves)",
        "    Mammalia  (37 leaves)",
        "      Carnivora  (37 leaves)",
        "        Felidae  (12 leaves)",
        "          Felis catus  (12 leaves)",
        "            Abyssinian",
        "            Bengal",
    ]
    assert len(lines) == tax.n_nodes
    cut = tax.format_tree(max_depth=5).splitlines()
    assert cut[-2:] == ["        Felidae  (12 leaves)", "        Canidae  (25 leaves)"]
    with pytest.raises(ValueError, match="`max_depth` >= 1, but got 0"):
        tax.format_tree(max_depth=0)


def test_the_taxonomy_command_describes_lists_leaves_and_draws_the_tree(capsys):
    from hierzoo.cli import main

    assert main(["taxonomy", "cub200"]) == 0
    assert capsys.readouterr().out == load_taxonomy("cub200").describe() + "\n"
    assert main(["taxonomy", "cub200", "--leaves"]) == 0
    leaves = capsys.readouterr().out.splitlines()
    tax = load_taxonomy("cub200")
    assert leaves == list(tax.labels) and [tax.leaf_index(x) for x in leaves] == list(range(200))
    assert main(["taxonomy", "inat21-animal", "--tree", "--depth", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Animalia  (5388 leaves)" and len(lines) == 1 + 6
    assert sum(int(x.split("(")[1].split()[0]) for x in lines[1:]) == 5388


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["taxonomy", "--leaves"], "--leaves needs a taxonomy NAME"),
        (["taxonomy", "--tree"], "--tree needs a taxonomy NAME"),
        (["taxonomy", "cub200", "--depth", "2"], "--depth goes with --tree"),
    ],
)
def test_the_taxonomy_command_refuses_options_it_cannot_honour(capsys, argv, message):
    from hierzoo.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_taxonomy_command_checks_depth_and_helps_every_option(capsys):
    from hierzoo.cli import build_parser, main

    with pytest.raises(SystemExit) as e:
        main(["taxonomy", "cub200", "--tree", "--depth", "0"])
    assert e.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tax_parser = sub.choices["taxonomy"]
    for action in tax_parser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help line"
