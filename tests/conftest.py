import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _synthetic_cache_in_a_temporary_folder(tmp_path_factory):
    """Keep the synthetic disk cache of the test run (and of its subprocesses) out of ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DERMSEG_CACHE_DIR", str(tmp_path_factory.mktemp("dermseg_cache")))
    mp.delenv("DERMSEG_NO_DISK_CACHE", raising=False)
    yield
    mp.undo()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_config(steps=4, data=None, **train):
    """A validated config that trains ``unet_tiny`` on 32-px synthetic data in seconds.

    ``data`` replaces the data section; ``train`` entries override the train section.
    """
    from segmentation.config import validate

    return validate(
        {
            "model": {"name": "unet_tiny"},
            "data": data
            or {"name": "synthetic", "image_size": 32, "n_train": 16, "n_val": 4, "n_test": 4},
            "optim": {"name": "adamw", "lr": 1.0e-3},
            "sched": {"name": "warmup_cosine", "warmup_steps": 1},
            "train": {
                "steps": steps,
                "batch_size": 4,
                "eval_every": 2,
                "checkpoint_every": 2,
                "image_panel_every": 0,
                **train,
            },
            "eval": {"batch_size": 4, "boundary": False},
        }
    )
