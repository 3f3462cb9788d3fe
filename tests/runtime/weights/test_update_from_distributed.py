"""A trainer in another process broadcasts new weights to the engine over torch.distributed
(gloo, loopback): SGLang's init_weights_update_group / update_weights_from_distributed, the
way OpenRLHF and TRL's server mode sync a separate engine."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from loomlm.runtime import Engine

from ..checkpoints import make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, prompts_of_lengths
from .refit import GREEDY, greedy, other_weights

# The trainer: joins the group as rank 0 (it hosts the store), then, each time the test
# writes a line, broadcasts every parameter of the checkpoint it was given, in order.
TRAINER = textwrap.dedent(
    """
    import sys
    import torch, transformers
    from loomlm.runtime.weights import SyncGroup

    port, path = int(sys.argv[1]), sys.argv[2]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    group = SyncGroup("127.0.0.1", port, rank=0, world_size=2, group_name="weights")
    print("joined", flush=True)
    for line in sys.stdin:
        if line.strip() == "send":
            for name, param in hf.named_parameters():
                group.broadcast(param.data.contiguous())
            print("sent", flush=True)
        else:
            break
    group.close()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trainer(port: int, checkpoint: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(port), str(checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_trainer_process_broadcasts_new_weights_over_gloo(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=21)
    named = list(new.named_parameters())
    names = [n for n, _ in named]
    dtypes = [str(p.dtype).removeprefix("torch.") for _, p in named]
    shapes = [list(p.shape) for _, p in named]
    prompts = prompts_of_lengths([14, 31], 512, seed=22)
    port = free_port()
    proc = trainer(port, tmp_path / "new")
    try:
        with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
            with pytest.raises(ValueError, match="backend"):
                engine.init_weights_update_group("127.0.0.1", port, 1, 2, "weights", "mpi")
            with pytest.raises(ValueError, match="no group named 'weights'"):
                engine.update_weights_from_distributed(names, dtypes, shapes, "weights")
            engine.init_weights_update_group("127.0.0.1", port, 1, 2, "weights", "gloo")
            assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
            with pytest.raises(ValueError, match="exists already"):
                engine.init_weights_update_group("127.0.0.1", port, 1, 2, "weights", "gloo")
            # checked before anything is received: the trainer is not involved
            with pytest.raises(ValueError, match=r"names\[0\].*shape"):
                engine.update_weights_from_distributed(names[:1], dtypes[:1], [[3, 3]], "weights")
            with pytest.raises(ValueError, match=r"dtypes\[0\]"):
                engine.update_weights_from_distributed(names[:1], ["int8"], shapes[:1], "weights")
            with pytest.raises(ValueError, match="one of each"):
                engine.update_weights_from_distributed(names, dtypes[:1], shapes, "weights")
            before = greedy(engine, prompts)

            result: dict[str, Any] = {}
            receiving = threading.Thread(
                target=lambda: result.update(
                    version=engine.update_weights_from_distributed(
                        names, dtypes, shapes, "weights", weight_version="sync-1"
                    )
                )
            )
            receiving.start()
            time.sleep(0.5)  # it waits for the trainer's broadcasts now
            # ... and the engine serves meanwhile, with the old weights
            assert greedy(engine, prompts) == before
            with pytest.raises(ValueError, match="another weight update"):
                engine.update_weights_from_tensor(named[:1])
            assert proc.stdin is not None
            proc.stdin.write("send\n")
            proc.stdin.flush()
            receiving.join(60)
            assert result["version"] == "sync-1" == engine.get_weight_version()
            assert proc.stdout.readline().strip() == "sent"
            assert greedy(engine, prompts) == [hf_greedy(new, p, 12) for p in prompts]
            engine.destroy_weights_update_group("weights")
            with pytest.raises(ValueError, match="no group named"):
                engine.destroy_weights_update_group("weights")
            assert_pool_whole(engine)
            assert (
                engine.generate(input_ids=prompts[0], sampling_params=GREEDY).weight_version
                == "sync-1"
            )
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)
