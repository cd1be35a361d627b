"""Two CPU processes under Lightning's DDP (gloo), launched the way a user's script is."""

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback

    from mammolens.utils.configuration import from_dict
    from mammolens.train import ArrayDataModule, TrainConfig, fit
    from mammolens.train.tiny import TinyCNN

    out = Path(sys.argv[1])


    class Record(Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batches.append([round(float(s), 4) for s in batch[0].sum(dim=(1, 2, 3))])

        def on_train_epoch_end(self, trainer, pl_module):
            params = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}
            torch.save(
                {"params": params, "batches": self.batches, "world": trainer.world_size},
                out / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt",
            )
            self.batches = []


    rng = np.random.default_rng(0)
    arrays = {f"s{i:02d}": rng.random((32, 32), dtype=np.float32) for i in range(24)}
    labels = np.arange(24) % 2
    cfg = from_dict(
        TrainConfig,
        {
            "epochs": 2, "batch_size": 4, "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.1,
            "transfer": "finetune-last-N", "unfreeze_last_n": 1, "head_epochs": 1,
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "progress": False, "patience": 0,
        },
        "train",
    )
    dm = ArrayDataModule.from_config(
        arrays.__getitem__, list(arrays), labels, {"train": range(16), "val": range(16, 24)}, cfg
    )
    torch.manual_seed(0)
    model = TinyCNN()
    torch.save(dict(model.named_parameters()), out / "initial.pt")
    result = fit(model, dm, cfg, out / "run", callbacks=[Record()])
    rank = int(__import__("os").environ.get("LOCAL_RANK", 0))
    torch.save({"history": result.history, "best": dict(result.model.named_parameters())}, out / f"result{rank}.pt")
    """
)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_keeps_ranks_in_step(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    initial = load("initial.pt")
    epochs = [[load(f"rank{r}-epoch{e}.pt") for r in (0, 1)] for e in (0, 1)]
    assert epochs[0][0]["world"] == 2

    for rank0, rank1 in epochs:
        # gradients were all-reduced: both processes hold the same weights after every epoch
        for name, p in rank0["params"].items():
            assert torch.equal(p, rank1["params"][name]), name
        # ... while each trained on its own half of the 16 training images
        seen0 = sorted(s for b in rank0["batches"] for s in b)
        seen1 = sorted(s for b in rank1["batches"] for s in b)
        assert len(seen0) == len(seen1) == 8 and not set(seen0) & set(seen1)

    head_epoch, finetune_epoch = (e[0]["params"] for e in epochs)
    for name, p in initial.items():
        if name.startswith("block"):  # untouched (no weight decay either) while only the head trains
            assert torch.equal(head_epoch[name], p), name
        if name.startswith("head"):
            assert not torch.equal(head_epoch[name], p), name
        if name.startswith("block1"):
            assert torch.equal(finetune_epoch[name], p), name
        if name.startswith("block2"):  # unfrozen after the head epoch, and kept in sync by DDP
            assert not torch.equal(finetune_epoch[name], p), name

    results = [load(f"result{r}.pt") for r in (0, 1)]
    assert len(results[0]["history"]) == 2 and results[0]["history"] == results[1]["history"]
    for name, p in results[0]["best"].items():
        assert torch.equal(p, results[1]["best"][name]), name
    assert (tmp_path / "run" / "history.csv").is_file() and (tmp_path / "run" / "learning_curves.png").is_file()
