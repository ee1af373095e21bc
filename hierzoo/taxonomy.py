"""Taxonomies: trees of named nodes, one level per depth, with integer node ids.

Node identity rule
------------------
A node is identified by its path from the top level down to it, compared case-insensitively.
Two consequences, both needed by the bundled data:

- the same name under two different parents is two nodes (ImageNet-Artifact has
  "sports equipment" under both "equipment" and "implement");
- the same name at two depths is two nodes (CUB-200 has the genus "Sayornis" and, below it,
  the species "Sayornis").

Names are compared case-insensitively everywhere; the first spelling seen is kept for display.
Node ids are grouped by level: the nodes of level ``k`` are the contiguous range
``level_offsets[k]:level_offsets[k + 1]``, in order of first appearance in the source file.

A node may have synonyms: other names that find it (Oxford-Pets' "american_bulldog" for "American
Bulldog"). A synonym names exactly one node, never another node's name at the same level; node
names and leaf labels come first in a lookup, then synonyms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hierzoo._taxonomy_files import (
    PATH_SEPARATOR,
    TaxonomyError,
    guess_format,
    read_csv_paths,
    read_json_object,
)
from hierzoo._taxonomy_files import norm as _norm

_PAPER = "the paper's {} (github.com/yuanqing-ai/LLM-Hierarchical-Consistency, MIT licence)"
_LINNAEAN = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


class Bundled(NamedTuple):
    """A taxonomy that ships with hierzoo: its data file, rank names, source and origin."""

    file: str
    ranks: tuple[str, ...] | None
    source: str
    paper: bool
    """Whether it is one of the paper's six taxonomies (``False``: hierzoo's own)."""


BUNDLED = {
    "cub200": Bundled(
        "hierarchy_CUB200.json",
        ("order", "family", "genus", "species"),
        _PAPER.format("hierarchy_CUB200.json"),
        True,
    ),
    "inat21-animal": Bundled(
        "hierarchy_Inat_animal.json", _LINNAEAN, _PAPER.format("hierarchy_Inat_animal.json"), True
    ),
    "inat21-plant": Bundled(
        "hierarchy_Inat_plantae.json", _LINNAEAN, _PAPER.format("hierarchy_Inat_plantae.json"), True
    ),
    "imagenet-animal": Bundled(
        "hierarchy_imagenet_animal.json",
        None,
        _PAPER.format("hierarchy_imagenet_animal.json") + ", from WordNet",
        True,
    ),
    "imagenet-artifact": Bundled(
        "hierarchy_imagenet_artifact.json",
        None,
        _PAPER.format("hierarchy_imagenet_artifact.json") + ", from WordNet",
        True,
    ),
    "food101": Bundled("hierarchy_Food.json", None, _PAPER.format("hierarchy_Food.json"), True),
    "oxford-pets": Bundled(
        "hierarchy_oxford_pets.json",
        ("kingdom", "phylum", "class", "order", "family", "species", "breed"),
        "hierzoo's: the Oxford-IIIT Pet Dataset's 37 breeds under their Linnaean lineage (the "
        "study's own Oxford-Pets taxonomy is not public); sources per level in "
        "hierarchy_oxford_pets.json and docs/taxonomies.md",
        False,
    ),
}
"""Bundled taxonomies by name. Each entry is a :class:`Bundled` tuple; ``entry[1]`` is the rank
names (``None`` for the WordNet and Food-101 taxonomies)."""


@dataclass(frozen=True, eq=False)
class Taxonomy:
    """A rooted forest of named nodes with one level per depth.

    Attributes:
        names: display name of every node, indexed by node id.
        parent: ``(n_nodes,)`` int64, the parent's node id, ``-1`` for the top level.
        level: ``(n_nodes,)`` int64, the depth of every node (0 is the top level).
        leaf_ids: ``(n_leaves,)`` int64, node id of every leaf, in file order.
        labels: the label of every leaf (the key of the source file), aligned with ``leaf_ids``.
        ranks: rank names per level (``("order", "family", ...)``) or ``None``.
        name: the bundled name or the file's stem.
        synonyms: other names of nodes, ``{synonym: node id}``, found by every lookup
            (``node``, ``find``, ``leaf_index``) and by the metrics' name encoding.
        source: where the taxonomy comes from (a bundled one's origin, or the file it was read
            from).
    """

    names: tuple[str, ...]
    parent: np.ndarray
    level: np.ndarray
    leaf_ids: np.ndarray
    labels: tuple[str, ...]
    ranks: tuple[str, ...] | None = None
    name: str | None = None
    synonyms: Mapping[str, int] = field(default_factory=dict)
    source: str | None = None
    _label_index: dict[str, int] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_paths(
        cls,
        paths: Mapping[str, Sequence[str]] | Iterable[Sequence[str]],
        *,
        ranks: Sequence[str] | None = None,
        name: str | None = None,
        synonyms: Mapping[str, str | Sequence[str]] | None = None,
        source: str | None = None,
    ) -> Taxonomy:
        """Build from leaf paths: ``{label: [top, ..., leaf]}`` or an iterable of paths.

        A label (the key) may differ from its path's last element; it stays an alias of the leaf.
        ``synonyms`` maps other names to the node each one names (a name, a label, or a path
        ``"a > b"`` / ``["a", "b"]``).

        Raises:
            TaxonomyError: a malformed path or synonym, naming it.
        """
        items = (
            list(paths.items())
            if isinstance(paths, Mapping)
            else [(p[-1] if len(p) else "", p) for p in paths]
        )
        node_of: dict[tuple[str, ...], int] = {}
        raw_names: list[str] = []
        raw_parent: list[int] = []
        raw_level: list[int] = []
        leaf_raw: list[int] = []
        leaf_of_node: dict[int, int] = {}
        labels: list[str] = []
        label_index: dict[str, int] = {}
        seen_path: dict[str, tuple[str, ...]] = {}
        for label, path in items:
            if not isinstance(label, str) or not label.strip():
                raise TaxonomyError(
                    f"Expected every leaf label to be a non-empty string, but got {label!r}."
                )
            if isinstance(path, str) or not isinstance(path, Sequence) or not path:
                raise TaxonomyError(
                    f"Expected the path of {label!r} to be a non-empty list of names from the top "
                    f"level down to the leaf, but got {path!r}."
                )
            for node in path:
                if not isinstance(node, str) or not node.strip():
                    raise TaxonomyError(
                        f"Leaf {label!r} has an empty or non-string node name {node!r} in its path "
                        f"{list(path)!r}; every level needs a name."
                    )
            key = tuple(_norm(n) for n in path)
            nlabel = _norm(label)
            if nlabel in seen_path:
                if seen_path[nlabel] != key:
                    raise TaxonomyError(
                        f"Leaf {label!r} is listed twice with different paths: "
                        f"{PATH_SEPARATOR.join(seen_path[nlabel])!r} and "
                        f"{PATH_SEPARATOR.join(key)!r}. "
                        "Keep one path per leaf."
                    )
                continue
            seen_path[nlabel] = key
            parent_id = -1
            for depth, node in enumerate(path):
                prefix = key[: depth + 1]
                nid = node_of.get(prefix)
                if nid is None:
                    nid = len(raw_names)
                    node_of[prefix] = nid
                    raw_names.append(node.strip())
                    raw_parent.append(parent_id)
                    raw_level.append(depth)
                parent_id = nid
            if parent_id in leaf_of_node:
                raise TaxonomyError(
                    f"Leaves {labels[leaf_of_node[parent_id]]!r} and {label!r} have the same path "
                    f"{PATH_SEPARATOR.join(path)!r}; give each leaf its own node."
                )
            leaf_of_node[parent_id] = len(leaf_raw)
            leaf_raw.append(parent_id)
            labels.append(label.strip())
        if not leaf_raw:
            raise TaxonomyError("The taxonomy has no leaves; expected at least one path.")

        raw_level_arr = np.asarray(raw_level, dtype=np.int64)
        # Group ids by level (stable), so each level is a contiguous id range.
        order = np.argsort(raw_level_arr, kind="stable")
        new_id = np.empty_like(order)
        new_id[order] = np.arange(len(order))
        raw_parent_arr = np.asarray(raw_parent, dtype=np.int64)
        parent = np.where(raw_parent_arr[order] >= 0, new_id[raw_parent_arr[order]], -1)
        leaf_ids = new_id[np.asarray(leaf_raw, dtype=np.int64)]

        has_child = np.zeros(len(order), dtype=bool)
        has_child[parent[parent >= 0]] = True
        inner_leaves = np.flatnonzero(has_child[leaf_ids])
        if inner_leaves.size:
            i = int(inner_leaves[0])
            raise TaxonomyError(
                f"Leaf {labels[i]!r} is also an inner node (other leaves lie below it); a leaf "
                "must end its path. Give it a child node of its own or drop the deeper leaves."
            )
        for nlabel, i in ((_norm(lab), i) for i, lab in enumerate(labels)):
            label_index.setdefault(nlabel, i)
        if ranks is not None:
            if isinstance(ranks, str) or not all(isinstance(r, str) for r in ranks):
                raise TaxonomyError(
                    f"Expected rank names as a list of strings, one per level (['order', "
                    f"'family', ...]), but got {ranks!r}."
                )
            ranks = tuple(ranks)
            depth = int(raw_level_arr.max()) + 1
            if len(ranks) != depth:
                raise TaxonomyError(
                    f"Expected {depth} rank names (one per level), but got {len(ranks)}: "
                    f"{list(ranks)!r}."
                )
        tax = cls(
            names=tuple(raw_names[i] for i in order),
            parent=parent,
            level=raw_level_arr[order],
            leaf_ids=leaf_ids,
            labels=tuple(labels),
            ranks=ranks,
            name=name,
            source=source,
            _label_index=label_index,
        )
        if not synonyms:
            return tax
        return replace(tax, synonyms=tax._resolve_synonyms(synonyms))

    def _resolve_synonyms(self, synonyms: Mapping[str, str | Sequence[str]]) -> dict[str, int]:
        if not isinstance(synonyms, Mapping):
            raise TaxonomyError(
                "Expected `synonyms` to be an object {synonym: node name or path}, but got "
                f"{synonyms!r}."
            )
        out: dict[str, int] = {}
        owner: dict[str, int] = {}
        for syn, target in synonyms.items():
            if not isinstance(syn, str) or not syn.strip():
                raise TaxonomyError(
                    f"Expected every synonym to be a non-empty string, but got {syn!r} (for "
                    f"{target!r})."
                )
            if not isinstance(target, (str, list, tuple)):
                raise TaxonomyError(
                    f"Synonym {syn!r} names {target!r}; expected a node name or a path (a list "
                    "of names from the top level down)."
                )
            try:
                nid = self.node(target)
            except TaxonomyError as e:
                raise TaxonomyError(f"Synonym {syn!r} names no single node: {e}") from None
            key = _norm(syn)
            if owner.setdefault(key, nid) != nid:
                raise TaxonomyError(
                    f"Synonym {syn!r} is given for two nodes, "
                    f"{PATH_SEPARATOR.join(self.path_names(owner[key]))!r} and "
                    f"{PATH_SEPARATOR.join(self.path_names(nid))!r}; a synonym names one node."
                )
            taken = self._level_name_ids[int(self.level[nid])].get(key, [])
            if any(other != nid for other in taken):
                raise TaxonomyError(
                    f"Synonym {syn!r} of {PATH_SEPARATOR.join(self.path_names(nid))!r} is already "
                    f"the name of {PATH_SEPARATOR.join(self.path_names(taken[0]))!r} at the same "
                    "level; drop the synonym or rename one node."
                )
            out[syn.strip()] = nid
        return out

    @classmethod
    def from_tree(
        cls,
        tree: Mapping | Sequence,
        *,
        ranks: Sequence[str] | None = None,
        name: str | None = None,
        source: str | None = None,
    ) -> Taxonomy:
        """Build from a nested tree: ``{"Aves": {"Passeriformes": ["Corvus corax", ...]}}``.

        A mapping maps a node to its subtree; a list holds leaf names (or further subtrees);
        a mapping value of ``None`` or ``{}`` marks a leaf.
        """
        paths: list[tuple[str, list[str]]] = []
        # depth-first, in file order, without recursion (a tree may be thousands of levels deep);
        # a stack entry is (is_leaf, leaf name or subtree, path so far)
        stack: list[tuple[bool, Any, list[str]]] = [(False, tree, [])]
        while stack:
            is_leaf, node, prefix = stack.pop()
            if is_leaf:
                paths.append((node, prefix))
                continue
            if isinstance(node, Mapping):
                todo = [
                    (True, key, prefix + [key])
                    if sub is None or (isinstance(sub, (Mapping, list)) and not sub)
                    else (False, sub, prefix + [key])
                    for key, sub in node.items()
                ]
            elif isinstance(node, list):
                todo = [
                    (True, sub, prefix + [sub]) if isinstance(sub, str) else (False, sub, prefix)
                    for sub in node
                ]
            else:
                raise TaxonomyError(
                    "Expected a mapping or a list under "
                    f"{PATH_SEPARATOR.join(prefix) or 'the top'!r}, "
                    f"but got {node!r}."
                )
            stack.extend(reversed(todo))
        return cls.from_paths(dict(_unique_pairs(paths)), ranks=ranks, name=name, source=source)

    @classmethod
    def from_parents(
        cls,
        parents: Mapping[str, str | None],
        *,
        ranks: Sequence[str] | None = None,
        name: str | None = None,
        source: str | None = None,
    ) -> Taxonomy:
        """Build from child -> parent edges (``None`` for a top-level node); names are node ids
        here.

        Raises:
            TaxonomyError: on a cycle or an unknown parent, naming the nodes involved.
        """
        lower = {_norm(k): k for k in parents}
        children = {_norm(v) for v in parents.values() if v is not None}
        for child, par in parents.items():
            if par is not None and _norm(par) not in lower:
                raise TaxonomyError(
                    f"Node {child!r} names the parent {par!r}, which is not a node; add {par!r} "
                    "with "
                    "its own parent (or None for a top-level node)."
                )
        paths: dict[str, list[str]] = {}
        for leaf in (k for k in parents if _norm(k) not in children):
            path, node, seen = [], leaf, set()
            while node is not None:
                if _norm(node) in seen:
                    raise TaxonomyError(
                        "The parent links form a cycle through "
                        f"{PATH_SEPARATOR.join(reversed(path))!r}; "
                        "every chain of parents must end at a top-level node (parent None)."
                    )
                seen.add(_norm(node))
                path.append(lower[_norm(node)])
                node = parents[lower[_norm(node)]]
            paths[leaf] = path[::-1]
        if not paths:
            raise TaxonomyError("The parent links form a cycle: no node is a leaf.")
        covered = {_norm(n) for p in paths.values() for n in p}
        missing = [k for k in parents if _norm(k) not in covered]
        if missing:
            raise TaxonomyError(f"The parent links form a cycle through {missing[0]!r}.")
        return cls.from_paths(paths, ranks=ranks, name=name, source=source)

    # ----------------------------------------------------------------- basic shape
    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_ids)

    @property
    def leaves(self) -> list[str]:
        """Leaf display names (the last element of each path), in file order."""
        return [self.names[i] for i in self.leaf_ids]

    @cached_property
    def depth(self) -> int:
        """Number of levels (the longest path)."""
        return int(self.level.max()) + 1

    @cached_property
    def level_offsets(self) -> np.ndarray:
        """``(depth + 1,)``: nodes of level ``k`` are ids
        ``level_offsets[k]:level_offsets[k+1]``."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.level, minlength=self.depth))])

    @property
    def level_sizes(self) -> list[int]:
        """Number of nodes per level."""
        return np.diff(self.level_offsets).tolist()

    def level_nodes(self, level: int) -> np.ndarray:
        """Node ids of one level."""
        return np.arange(self.level_offsets[level], self.level_offsets[level + 1])

    @cached_property
    def leaf_depth(self) -> np.ndarray:
        """``(n_leaves,)``: number of levels of each leaf's path."""
        return self.level[self.leaf_ids] + 1

    @cached_property
    def paths(self) -> np.ndarray:
        """``(n_leaves, depth)`` int64 node ids of each leaf's path, padded with ``-1``."""
        out = np.full((self.n_leaves, self.depth), -1, dtype=np.int64)
        cur = self.leaf_ids.copy()
        lev = self.level[cur]
        rows = np.arange(self.n_leaves)
        for _ in range(self.depth):
            alive = cur >= 0
            out[rows[alive], lev[alive]] = cur[alive]
            cur = np.where(alive, self.parent[np.maximum(cur, 0)], -1)
            lev = lev - 1
        return out

    @cached_property
    def is_leaf(self) -> np.ndarray:
        out = np.zeros(self.n_nodes, dtype=bool)
        out[self.leaf_ids] = True
        return out

    @cached_property
    def _children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for child, par in enumerate(self.parent.tolist()):
            if par >= 0:
                out[par].append(child)
        return out

    def children(self, node: int | str) -> list[int]:
        """Child node ids of a node (id or name)."""
        return list(self._children[self._as_id(node)])

    @property
    def roots(self) -> list[int]:
        """Node ids of the top level."""
        return self.level_nodes(0).tolist()

    def ancestors(self, node: int | str) -> list[int]:
        """Node ids from the top level down to ``node`` (included)."""
        nid = self._as_id(node)
        out = []
        while nid >= 0:
            out.append(nid)
            nid = int(self.parent[nid])
        return out[::-1]

    def path_names(self, node: int | str) -> list[str]:
        return [self.names[i] for i in self.ancestors(node)]

    def rank(self, level: int) -> str | None:
        return self.ranks[level] if self.ranks else None

    # ----------------------------------------------------------------- lookup
    @cached_property
    def _by_name(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for nid, n in enumerate(self.names):
            out.setdefault(_norm(n), []).append(nid)
        return out

    @cached_property
    def _level_name_ids(self) -> list[dict[str, list[int]]]:
        """Per level, ``{lower-cased name or synonym: node ids}`` (the metrics' name encoding)."""
        out: list[dict[str, list[int]]] = [{} for _ in range(self.depth)]
        for nid, n in enumerate(self.names):
            out[int(self.level[nid])].setdefault(_norm(n), []).append(nid)
        for syn, nid in self.synonyms.items():
            out[int(self.level[nid])].setdefault(_norm(syn), [nid])
        return out

    @cached_property
    def _synonym_index(self) -> dict[str, int]:
        return {_norm(syn): nid for syn, nid in self.synonyms.items()}

    def find(self, name: str, level: int | None = None) -> list[int]:
        """All node ids named ``name`` (case-insensitive), optionally only at one level.

        Leaf labels (keys of the source file) and synonyms are found too, when no node has the
        name.
        """
        key = _norm(name)
        if PATH_SEPARATOR.strip() in name and key not in self._by_name:
            return self._find_path([p for p in name.split(PATH_SEPARATOR.strip())], level)
        ids = (
            self._level_name_ids[level].get(key, [])
            if level is not None
            else self._by_name.get(key, [])
        )
        if not ids and key in self._label_index:
            leaf = int(self.leaf_ids[self._label_index[key]])
            if level is None or self.level[leaf] == level:
                ids = [leaf]
        if not ids and key in self._synonym_index:
            nid = self._synonym_index[key]
            if level is None or self.level[nid] == level:
                ids = [nid]
        return list(ids)

    def _find_path(self, parts: Sequence[str], level: int | None) -> list[int]:
        parts = [p.strip() for p in parts]
        if level is not None and level != len(parts) - 1:
            return []
        cands = [i for i in self._level_name_ids[0].get(_norm(parts[0]), [])]
        for depth, part in enumerate(parts[1:], start=1):
            wanted = (
                set(self._level_name_ids[depth].get(_norm(part), []))
                if depth < self.depth
                else set()
            )
            cands = [c for p in cands for c in self._children[p] if c in wanted]
        return cands

    def node(self, name: str | Sequence[str], level: int | None = None) -> int:
        """The node id of a name, a leaf label, or a path (``"a > b > c"`` or ``["a", "b", "c"]``).

        Raises:
            TaxonomyError: if no node or more than one node matches, with the candidates.
        """
        ids = (
            self._find_path(list(name), level)
            if not isinstance(name, str)
            else self.find(name, level)
        )
        if len(ids) == 1:
            return ids[0]
        shown = name if isinstance(name, str) else PATH_SEPARATOR.join(name)
        where = f" at level {level}" if level is not None else ""
        if not ids:
            from difflib import get_close_matches

            close = get_close_matches(_norm(shown), list(self._by_name), n=3)
            hint = f" Closest names: {close}." if close else ""
            raise TaxonomyError(f"No node named {shown!r}{where} in taxonomy {self.name!r}.{hint}")
        options = [PATH_SEPARATOR.join(self.path_names(i)) for i in ids]
        raise TaxonomyError(
            f"The name {shown!r}{where} is ambiguous in taxonomy {self.name!r}: it names "
            f"{len(ids)} "
            f"nodes {options}. Pass a level, or the path as "
            f"{PATH_SEPARATOR.join(self.path_names(ids[0]))!r}."
        )

    def leaf_index(self, label: str) -> int:
        """Row of a leaf in ``paths`` / ``leaf_ids`` by its label or leaf name."""
        key = _norm(label)
        if key in self._label_index:
            return self._label_index[key]
        leaf_row = self._leaf_row_of_node
        ids = [i for i in self.find(label) if i in leaf_row]
        if len(ids) == 1:
            return leaf_row[ids[0]]
        if not ids:
            self.node(label)  # raises with the closest names when nothing matches
            raise TaxonomyError(f"{label!r} is a node but not a leaf of taxonomy {self.name!r}.")
        raise TaxonomyError(
            f"{label!r} names {len(ids)} leaves of taxonomy {self.name!r}; use the leaf's label "
            f"or its path, such as {PATH_SEPARATOR.join(self.path_names(ids[0]))!r}."
        )

    @cached_property
    def _leaf_row_of_node(self) -> dict[int, int]:
        return {int(n): i for i, n in enumerate(self.leaf_ids)}

    def _as_id(self, node: int | str) -> int:
        if isinstance(node, (int, np.integer)):
            if not 0 <= int(node) < self.n_nodes:
                raise TaxonomyError(f"Node id {node} is out of range [0, {self.n_nodes}).")
            return int(node)
        return self.node(node)

    # ----------------------------------------------------------------- restriction
    def restrict(
        self, clade: str | int | Sequence[str] | None = None, leaves: Iterable[str] | None = None
    ) -> Taxonomy:
        """A taxonomy with only the leaves below ``clade`` and/or among ``leaves``.

        Levels are kept as they are (the path above the clade stays), so rank names and level
        indices mean the same as in the full taxonomy.
        """
        keep = np.ones(self.n_leaves, dtype=bool)
        if clade is not None:
            cid = (
                self._as_id(clade)
                if not isinstance(clade, Sequence) or isinstance(clade, str)
                else self.node(clade)
            )
            keep &= self.paths[:, self.level[cid]] == cid
        if leaves is not None:
            rows = np.zeros(self.n_leaves, dtype=bool)
            rows[[self.leaf_index(lab) for lab in leaves]] = True
            keep &= rows
        if not keep.any():
            raise TaxonomyError(
                f"No leaf of taxonomy {self.name!r} is left after restricting to {clade!r}."
            )
        paths = {
            self.labels[i]: self.path_names(int(self.leaf_ids[i])) for i in np.flatnonzero(keep)
        }
        depth = int(self.leaf_depth[keep].max())
        ranks = self.ranks[:depth] if self.ranks else None
        kept_nodes = set(self.paths[keep].ravel().tolist())
        synonyms = {s: self.path_names(n) for s, n in self.synonyms.items() if n in kept_nodes}
        return Taxonomy.from_paths(
            paths, ranks=ranks, name=self.name, synonyms=synonyms, source=self.source
        )

    # ----------------------------------------------------------------- describing
    @cached_property
    def leaves_below(self) -> np.ndarray:
        """``(n_nodes,)`` int64: the number of leaves at or below every node."""
        ids = self.paths[self.paths >= 0]
        return np.bincount(ids, minlength=self.n_nodes).astype(np.int64)

    def describe(self, examples: int = 3) -> str:
        """A few lines about the taxonomy: its name, source, leaves, depth, and per level the
        rank, the number of nodes and the first ``examples`` names (``hierzoo taxonomy NAME``)."""
        lo, hi = int(self.leaf_depth.min()), int(self.leaf_depth.max())
        depth = f"{self.depth} levels" + (f" (leaves at depth {lo} to {hi})" if lo != hi else "")
        lines = [
            str(self.name),
            f"  source: {self.source or 'built in Python'}",
            f"  leaves: {self.n_leaves}",
            f"  depth: {depth}",
            f"  ranks: {', '.join(self.ranks) if self.ranks else 'none'}",
        ]
        if self.synonyms:
            lines.append(f"  synonyms: {len(self.synonyms)}")
        ranks = [self.rank(k) or "-" for k in range(self.depth)]
        width = max(len("rank"), *(len(r) for r in ranks))
        lines.append(f"  {'level':<5}  {'rank':<{width}}  {'nodes':>6}  names")
        for k in range(self.depth):
            ids = self.level_nodes(k)
            shown = ", ".join(self.names[i] for i in ids[:examples])
            more = f", ... ({len(ids) - examples} more)" if len(ids) > examples else ""
            lines.append(f"  {k + 1:<5}  {ranks[k]:<{width}}  {len(ids):>6}  {shown}{more}")
        return "\n".join(lines)

    def format_tree(self, max_depth: int | None = None, indent: str = "  ") -> str:
        """The taxonomy as an indented tree, one node per line, children in id order; an inner
        node shows how many leaves lie below it. With ``max_depth``, only the first
        ``max_depth`` levels are drawn."""
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 1):
            raise ValueError(f"Expected `max_depth` >= 1, but got {max_depth!r}.")
        below = self.leaves_below
        lines: list[str] = []
        stack = [(r, 0) for r in reversed(self.roots)]
        while stack:  # no recursion: a tree may be thousands of levels deep
            node, depth = stack.pop()
            kids = self._children[node]
            note = f"  ({int(below[node])} leaves)" if kids else ""
            lines.append(indent * depth + self.names[node] + note)
            if max_depth is None or depth + 1 < max_depth:
                stack.extend((c, depth + 1) for c in reversed(kids))
        return "\n".join(lines)

    def to_paths(self) -> dict[str, list[str]]:
        """``{label: [top, ..., leaf]}``, the paper's file format."""
        return {lab: self.path_names(int(n)) for lab, n in zip(self.labels, self.leaf_ids)}

    def __repr__(self) -> str:
        return (
            f"Taxonomy(name={self.name!r}, leaves={self.n_leaves}, depth={self.depth}, "
            f"level_sizes={self.level_sizes})"
        )

    def __len__(self) -> int:
        return self.n_leaves


def _unique_pairs(pairs: Iterable[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    seen: dict[str, list[str]] = {}
    for key, path in pairs:
        if _norm(key) in seen and [_norm(n) for n in seen[_norm(key)]] != [_norm(n) for n in path]:
            raise TaxonomyError(
                f"Leaf {key!r} appears twice with different paths: "
                f"{PATH_SEPARATOR.join(seen[_norm(key)])!r} "
                f"and {PATH_SEPARATOR.join(path)!r}. Keep one path per leaf."
            )
        seen.setdefault(_norm(key), path)
    return [(k, p) for k, p in pairs]


def bundled_taxonomies() -> list[str]:
    """Names of the taxonomies that ship with hierzoo."""
    return list(BUNDLED)


def load_taxonomy(
    name_or_path: str | Path, *, ranks: Sequence[str] | None = None, format: str | None = None
) -> Taxonomy:
    """Load a bundled taxonomy by name, or one from a file.

    Args:
        name_or_path: a bundled name (see :func:`bundled_taxonomies`) or a file path.
        ranks: rank names per level, overriding what the file says.
        format: ``"paths"``, ``"tree"``, ``"parents"`` or ``"csv"``; guessed when ``None``:
            - ``paths``: JSON ``{leaf: [top, ..., leaf]}`` (the paper's format), or an object
              ``{"paths": {...}, "ranks": [...], "synonyms": {...}, "source": "..."}`` (all
              but ``paths`` optional; ``synonyms`` maps other names to the node each names);
            - ``tree``: nested JSON (``{"Aves": {"Passeriformes": ["Corvus corax", ...]}}``);
            - ``parents``: JSON ``{node: parent_or_null}``;
            - ``csv``: one column per rank (the header gives the rank names), one row per leaf,
              and optionally a ``label`` column.
    """
    key = str(name_or_path).lower()
    if key in BUNDLED:
        entry = BUNDLED[key]
        text = resources.files("hierzoo.data.taxonomies").joinpath(entry.file).read_text("utf-8")
        data = json.loads(text)
        synonyms = None
        if isinstance(data.get("paths"), Mapping):
            data, synonyms = data["paths"], data.get("synonyms")
        return Taxonomy.from_paths(
            data,
            ranks=ranks or entry.ranks,
            name=key,
            synonyms=synonyms,
            source=entry.source,
        )
    path = Path(name_or_path)
    if path.is_dir():
        raise TaxonomyError(
            f"Taxonomy {str(name_or_path)!r} is a folder; give a bundled name or a taxonomy file "
            "(JSON or CSV)."
        )
    if not path.is_file():
        from difflib import get_close_matches

        close = get_close_matches(key, list(BUNDLED), n=3)
        raise TaxonomyError(
            f"Unknown taxonomy {str(name_or_path)!r}: not a bundled name and no such file. "
            f"Bundled: {list(BUNDLED)}" + (f"; did you mean {close}?" if close else ".")
        )
    formats = ("paths", "tree", "parents", "csv")
    if format is not None and format not in formats:
        raise TaxonomyError(f"Expected `format` to be one of {formats}, but got {format!r}.")
    if format == "csv" or (format is None and path.suffix.lower() == ".csv"):
        paths, csv_ranks = read_csv_paths(path)
        return Taxonomy.from_paths(
            paths, ranks=ranks or csv_ranks, name=path.stem, source=str(path)
        )
    data = read_json_object(path)
    source = str(path)
    if isinstance(data.get("paths"), Mapping):
        ranks = ranks or data.get("ranks")
        if isinstance(data.get("source"), str):
            source = f"{path}: {data['source']}"
        synonyms = data.get("synonyms")
        return Taxonomy.from_paths(
            data["paths"], ranks=ranks, name=path.stem, synonyms=synonyms, source=source
        )
    format = format or guess_format(data)
    if format == "parents":
        return Taxonomy.from_parents(data, ranks=ranks, name=path.stem, source=source)
    if format == "tree":
        return Taxonomy.from_tree(data, ranks=ranks, name=path.stem, source=source)
    return Taxonomy.from_paths(data, ranks=ranks, name=path.stem, source=source)


def as_taxonomy(taxonomy: Taxonomy | str | Path | None) -> Taxonomy | None:
    """``taxonomy`` as a :class:`Taxonomy`: a bundled name or a taxonomy file is loaded
    (:func:`load_taxonomy`); ``None`` stays ``None``.

    Raises:
        TypeError: anything else, naming what to pass.
    """
    if taxonomy is None or isinstance(taxonomy, Taxonomy):
        return taxonomy
    if isinstance(taxonomy, (str, Path)):
        return load_taxonomy(taxonomy)
    raise TypeError(
        f"Expected a Taxonomy, a bundled taxonomy name or a taxonomy file, but got "
        f"{type(taxonomy).__name__} {str(taxonomy)[:60]!r}."
    )
