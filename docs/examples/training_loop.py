"""Fine-tune a model and measure its hierarchical consistency from the training loop.

    python docs/examples/training_loop.py                          # a few seconds on a CPU
    python docs/examples/training_loop.py --epochs 5 --steps 20
    torchrun --nproc-per-node 2 docs/examples/training_loop.py     # DDP on CPU (gloo)

Offline and self-contained: a tiny open_clip CLIP with random weights and synthetic images of
six CUB-200 species (each species its own colour pattern). Training is contrastive at every
level of the taxonomy: each image against the names of every node of each level, the loss
summed over levels (order, family, genus, species). Every epoch the loop asks hierzoo about the
model as it is at that moment:

- ``hierzoo.wrap(model, tokenizer, preprocess=...)``: the model's ``HierClassifier``, with no
  copy of the weights (wrap again each evaluation: CLIP text embeddings are cached per
  classifier);
- ``clf.predict_path(batch, taxonomy)`` per evaluation batch, and ``HierarchicalMetrics.update``
  with the predicted and true node ids; ``compute()`` at the end of the epoch gives HCA, leaf
  accuracy, path consistency ... Under torchrun each rank evaluates its share and ``sync()``
  sums the counts, so every rank prints the numbers of the whole evaluation set;
- after training, ``clf.answer(questions)``: the paper's four-choice question at every level.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.distributed as dist
from PIL import Image

import hierzoo
from hierzoo.metrics import HierarchicalMetrics
from hierzoo.models.tiny_clip import tiny_openclip_config

SPECIES = [
    "Black-footed Albatross",
    "Laysan Albatross",
    "Common Raven",
    "Fish Crow",
    "Red-headed Woodpecker",
    "Downy Woodpecker",
]


def synthetic_images(n_per_species: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """Noisy 32x32 images, a colour and a stripe pattern per species; and each image's species."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(0).integers(0, 256, (len(SPECIES), 2, 3))
    images, labels = [], []
    for s in range(len(SPECIES)):
        for _ in range(n_per_species):
            pixels = np.empty((32, 32, 3))
            pixels[:, :] = palette[s, 0]
            pixels[:, s % 4 :: 4 + s % 3] = palette[s, 1]
            pixels += rng.normal(0, 25, pixels.shape)
            images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
            labels.append(s)
    return images, np.array(labels)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)  # the same initial weights on every rank

    taxonomy = hierzoo.load_taxonomy("cub200").restrict(leaves=SPECIES)
    leaf_rows = [taxonomy.leaf_index(s) for s in SPECIES]
    paths = taxonomy.paths[leaf_rows]  # (species, levels) node ids: the true path of each species
    offsets = taxonomy.level_offsets.tolist()

    model = open_clip.CLIP(**tiny_openclip_config())
    tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
    preprocess = open_clip.image_transform(32, is_train=False)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    prompts = tokenizer([f"a photo of a {name}." for name in taxonomy.names])

    train_images, train_labels = synthetic_images(16, seed=1)
    eval_images, eval_labels = synthetic_images(4, seed=2)
    train_x = torch.stack([preprocess(im) for im in train_images])
    eval_x = torch.stack([preprocess(im) for im in eval_images])
    mine = np.arange(len(eval_x))[rank::world]  # this rank's share of the evaluation set
    train_mine = np.arange(len(train_x))[rank::world]

    metrics = HierarchicalMetrics(taxonomy=taxonomy)
    rng = np.random.default_rng(rank)
    results: dict[str, float] = {}
    for epoch in range(1, args.epochs + 1):
        trained.train()
        for _ in range(args.steps):
            batch = rng.choice(
                train_mine, size=min(args.batch_size, len(train_mine)), replace=False
            )
            image_features, text_features, scale = trained(train_x[batch], prompts)[:3]
            logits = scale * image_features @ text_features.T  # (B, n_nodes)
            target = paths[train_labels[batch]]  # (B, levels) node ids
            loss = sum(
                torch.nn.functional.cross_entropy(
                    logits[:, lo:hi], torch.as_tensor(target[:, k] - lo)
                )
                for k, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:]))
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        # evaluation: hierzoo on the model as it is now (wrap puts it in eval mode)
        clf = hierzoo.wrap(trained, tokenizer, preprocess=preprocess)
        metrics.reset()
        for batch in np.array_split(mine, max(1, len(mine) // args.batch_size)):
            pred = clf.predict_path(eval_x[batch], taxonomy, strategy="independent")
            metrics.update(pred.node_ids, paths[eval_labels[batch]])
        metrics.sync()  # sums every rank's counts (a no-op without torch.distributed)
        results = metrics.compute()
        if rank == 0:
            print(
                f"epoch {epoch}: loss {loss.item():.3f}  HCA {results['hca']:.3f}  leaf "
                f"{results['leaf_acc']:.3f}  consistency {results['consistency']:.3f}  "
                f"(n={results['n']})"
            )

    # the paper's protocol after training: four-choice questions at every level
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in mine:
            files.append(Path(tmp) / f"{i}.png")
            eval_images[i].save(files[-1])
        questions = hierzoo.build_questions(
            taxonomy, [(str(f), SPECIES[eval_labels[i]]) for f, i in zip(files, mine)], seed=0
        )
        for q, f in zip(questions, files):
            q.path = f
        answers = clf.answer(questions)
        asked = HierarchicalMetrics(taxonomy=taxonomy)
        asked.update(
            [answers.predicted(i) for i in range(len(questions))], [q.answers for q in questions]
        )
        asked.sync()
        scores = asked.compute()
    if rank == 0:
        print(
            f"four-choice questions: HCA {scores['hca']:.3f}, accuracy per level "
            f"{scores['level_acc']}"
        )
    if world > 1:
        dist.destroy_process_group()
    results["questions_hca"] = scores["hca"]
    return results


if __name__ == "__main__":
    main()
