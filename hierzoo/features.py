"""Feature extraction to disk, in shards that a rerun resumes, and loading them back.

A feature store is a directory (``hierzoo probe`` uses ``OUT/features``)::

    manifest.json                        what the store holds: model, image count, shard size
    <site>/shard-00000.safetensors       images 0 .. shard_size-1 at one site
    <site>/shard-00001.safetensors       ...

``<site>`` is the site's name with ``:`` written ``_`` (``llm:-1`` -> ``llm_-1``). Each shard
holds one tensor, ``features`` ``(n, D)`` float32 (NaN rows for images that failed), and in
its safetensors metadata the site, the image ids, the per-image errors, the model and the
shard's first image. A shard is written to a temporary file and renamed, so a finished shard is
whole; a rerun skips every shard that opens and names the expected ids, and redoes a missing or
torn one. All the sites missing from one shard come from one pass of the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hierzoo._io import atomic_write, format_diff, settings_diff, write_json
from hierzoo.models._sites import parse_sites

if TYPE_CHECKING:
    from hierzoo.images import ImageInput
    from hierzoo.models.base import HierClassifier
    from hierzoo.taxonomy import Taxonomy

FORMAT = "hierzoo-features/1"
MANIFEST = "manifest.json"


class FeatureStoreError(ValueError):
    """A feature store that holds something else, or a shard that is missing or torn."""


@dataclass
class StoredFeatures:
    """One site's features read back from a store.

    Attributes:
        site: the site name.
        ids: the image ids, in extraction order.
        data: ``(N, D)`` float32; NaN rows where ``errors[i]`` is set.
        errors: per image, ``None`` or why it failed.
    """

    site: str
    ids: list[str]
    data: torch.Tensor
    errors: list[str | None]


def site_dirname(site: str) -> str:
    """The folder of a site in a store: its name with ``:`` written ``_``."""
    return parse_sites(site)[0].name.replace(":", "_")


def shard_path(store: str | Path, site: str, index: int) -> Path:
    return Path(store) / site_dirname(site) / f"shard-{index:05d}.safetensors"


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _read_shard(path: Path) -> tuple[dict[str, str], torch.Tensor] | None:
    """``(metadata, features)`` of a whole shard, or ``None`` when it is missing or torn."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            data = f.get_tensor("features")
    except Exception:  # a torn or foreign file: safetensors raises several types
        return None
    if meta.get("format") != FORMAT:
        return None
    return meta, data


def _shard_done(
    path: Path, ids: Sequence[str], identity: dict[str, str], retry_errors: bool = False
) -> bool:
    got = _read_shard(path)
    if got is None:
        return False
    meta, data = got
    try:
        same_ids = json.loads(meta.get("ids", "null")) == list(ids)
        failed = any(e is not None for e in json.loads(meta.get("errors", "[]")))
    except json.JSONDecodeError:
        return False
    return (
        same_ids
        and data.shape[0] == len(ids)
        and all(meta.get(k) == v for k, v in identity.items())
        and not (retry_errors and failed)
    )


def _write_shard(path: Path, data: torch.Tensor, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    data = data.float().contiguous()
    atomic_write(path, lambda tmp: save_file({"features": data}, str(tmp), metadata=meta))


def _check_manifest(store: Path, manifest: dict[str, Any]) -> None:
    path = store / MANIFEST
    if path.is_file():
        diff = settings_diff(json.loads(path.read_text()), manifest)
        if diff:
            raise FeatureStoreError(
                f"{store} holds features of another run ({format_diff(diff)}); extract into a "
                "new directory, or delete this one to start over."
            )
        return
    write_json(path, manifest)


def extract_features(
    clf: HierClassifier,
    images: Sequence[ImageInput],
    where: str | Sequence[str],
    store: str | Path,
    *,
    ids: Sequence[str] | None = None,
    taxonomy: Taxonomy | None = None,
    shard_size: int = 1024,
    batch_size: int | None = None,
    progress: bool = False,
    retry_errors: bool = False,
    model_content: str | None = None,
) -> dict[str, int]:
    """Extract features of ``images`` at every site of ``where`` into ``store``, resuming.

    Args:
        clf: the model (:meth:`HierClassifier.features` does the work).
        images: image paths (or PIL images, with ``ids``).
        where: sites, as for :meth:`HierClassifier.features`.
        store: the store's directory (created).
        ids: one id per image, kept beside the features; default the paths as given.
        taxonomy: for answer sites (its level questions).
        shard_size: images per shard; a rerun must use the same.
        retry_errors: extract again the shards that hold images that failed (fixed since);
            otherwise a finished shard is kept as it is, failures included.
        model_content: what identifies the model's weights (``hierzoo probe`` passes the
            fingerprint ``hierzoo eval`` records: a local directory's file digests, a hub
            commit); default the loaded model's own when it knows its spec. Kept in the
            store's manifest: a store of other weights under the same name is refused.

    Returns:
        ``{"shards": total per site, "written": shards written now, "skipped": shards already
        done}``.

    Raises:
        FeatureStoreError: the store holds features of another model (another name, or other
            weights under the same name: a local directory's files are fingerprinted), image
            list or shard size.
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"Expected `shard_size` >= 1, but got {shard_size!r}.")
    images = list(images)
    if ids is None:
        if not all(isinstance(x, (str, Path)) for x in images):
            raise ValueError("Images that are not paths need `ids` to name them in the store.")
        ids = [str(x) for x in images]
    ids = [str(i) for i in ids]
    if len(ids) != len(images):
        raise ValueError(f"Expected one id per image ({len(images)}), but got {len(ids)}.")
    if len(set(ids)) != len(ids):
        raise ValueError(
            "Expected distinct image ids, but some repeat; give each image its own id."
        )
    sites = [s.name for s in parse_sites(where)]
    store = Path(store)
    model = getattr(clf, "name", "") or type(clf).__name__
    _check_manifest(
        store,
        {
            "format": FORMAT,
            "model": model,
            "model_content": model_content or _weights(clf),
            "dtype": str(getattr(clf, "dtype", "")).replace("torch.", ""),
            "n_images": len(ids),
            "ids_sha1": _ids_digest(ids),
            "shard_size": shard_size,
        },
    )
    tax_name = taxonomy.name if taxonomy is not None else ""
    n_shards = -(-len(ids) // shard_size)
    written = skipped = 0
    with tqdm(
        total=len(ids), unit="img", desc="features", disable=not progress, dynamic_ncols=True
    ) as bar:
        for index in range(n_shards):
            lo, hi = index * shard_size, min((index + 1) * shard_size, len(ids))
            part_ids = ids[lo:hi]

            def identity(site: str) -> dict[str, str]:
                return {
                    "site": site,
                    "model": model,
                    "taxonomy": tax_name if "answer" in site else "",
                }

            todo = [
                s
                for s in sites
                if not _shard_done(shard_path(store, s, index), part_ids, identity(s), retry_errors)
            ]
            skipped += len(sites) - len(todo)
            if todo:
                feats = clf.features(images[lo:hi], todo, taxonomy=taxonomy, batch_size=batch_size)
                for site in todo:
                    meta = {
                        "format": FORMAT,
                        **identity(site),
                        "start": str(lo),
                        "ids": json.dumps(part_ids, ensure_ascii=False),
                        "errors": json.dumps(feats.errors, ensure_ascii=False),
                    }
                    _write_shard(shard_path(store, site, index), feats[site], meta)
                    written += 1
            bar.update(hi - lo)
    return {"shards": n_shards, "written": written, "skipped": skipped}


def _weights(clf: HierClassifier) -> str | None:
    """What identifies the model's weights (a local directory's file digests, a hub commit),
    as ``hierzoo eval`` records it; ``None`` when the model has no spec (one built in memory)."""
    spec = getattr(clf, "spec", None)
    if spec is None:
        return None
    from hierzoo.models._hub import model_fingerprint

    return model_fingerprint(spec)


def _n_shards(store: Path) -> int:
    manifest_path = store / MANIFEST
    if not manifest_path.is_file():
        raise FeatureStoreError(
            f"{store} is not a feature store (no {MANIFEST}); extract features into it first."
        )
    manifest = json.loads(manifest_path.read_text())
    return -(-int(manifest["n_images"]) // int(manifest["shard_size"]))


def _missing(store: Path, name: str, index: int) -> FeatureStoreError:
    return FeatureStoreError(
        f"Shard {index} of {name!r} in {store} is missing or torn "
        f"({shard_path(store, name, index).name}); run "
        "the extraction again to finish it."
    )


def feature_errors(store: str | Path, site: str) -> list[str | None]:
    """The per-image errors of one site (reads the shards' metadata only)."""
    from safetensors import safe_open

    store = Path(store)
    name = parse_sites(site)[0].name
    errors: list[str | None] = []
    for index in range(_n_shards(store)):
        try:
            with safe_open(str(shard_path(store, name, index)), framework="pt") as f:
                errors += json.loads((f.metadata() or {})["errors"])
        except Exception:
            raise _missing(store, name, index) from None
    return errors


def load_features(store: str | Path, site: str) -> StoredFeatures:
    """One site's features from a store, all shards in order.

    Raises:
        FeatureStoreError: no such site in the store, or a shard missing or torn (rerun the
            extraction to finish it).
    """
    store = Path(store)
    name = parse_sites(site)[0].name
    n_shards = _n_shards(store)
    manifest = json.loads((store / MANIFEST).read_text())
    ids: list[str] = []
    errors: list[str | None] = []
    parts: list[torch.Tensor] = []
    for index in range(n_shards):
        got = _read_shard(shard_path(store, name, index))
        if got is None:
            raise _missing(store, name, index)
        meta, data = got
        ids += json.loads(meta["ids"])
        errors += json.loads(meta["errors"])
        parts.append(data)
    if _ids_digest(ids) != manifest["ids_sha1"]:
        raise FeatureStoreError(
            f"The shards of {name!r} in {store} do not hold the manifest's images; extract again."
        )
    dim = max((p.shape[1] for p in parts), default=0)
    # a shard in which every image failed does not know the width: its rows are NaN
    parts = [p if p.shape[1] == dim else torch.full((len(p), dim), float("nan")) for p in parts]
    return StoredFeatures(name, ids, torch.cat(parts) if parts else torch.empty(0, 0), errors)
