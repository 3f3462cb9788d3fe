"""The weight-update endpoints over real HTTP on 127.0.0.1: off unless the operator turns them
on, then from tensors (base64 safetensors buckets), from disk (under --weights-dir only) and
from a trainer process's gloo broadcast (to allowed addresses only)."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
from loomlm.runtime import Engine
from safetensors.torch import save as save_safetensors

from ..checkpoints import make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, prompts_of_lengths
from ..server.live_server import LiveServer
from .refit import other_weights
from .test_update_from_distributed import free_port, trainer

GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


def _generate(http: httpx.Client, prompt: list[int]) -> dict[str, Any]:
    r = http.post("/generate", json={"input_ids": prompt, "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()


def _buckets(named: list[tuple[str, Any]], size: int) -> list[str]:
    return [
        base64.b64encode(
            save_safetensors({n: p.detach().contiguous() for n, p in named[i : i + size]})
        ).decode()
        for i in range(0, len(named), size)
    ]


def test_weight_updates_are_off_unless_the_operator_enables_them(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=512) as engine:
        with LiveServer(engine) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/get_weight_version").json() == {"weight_version": "default"}
            for route in (
                "/update_weights_from_tensor",
                "/update_weights_from_disk",
                "/init_weights_update_group",
                "/update_weights_from_distributed",
                "/destroy_weights_update_group",
                "/release_memory_occupation",
                "/resume_memory_occupation",
                "/pause_generation",
                "/continue_generation",
            ):
                r = http.post(route, json={})
                assert r.status_code == 403, route
                assert "--enable-weight-updates" in r.json()["error"]["message"]


def test_update_from_tensor_and_from_disk_over_http(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    root = tmp_path / "weights"
    new = other_weights(path, root / "new", seed=31)
    prompt = prompts_of_lengths([17], 512, seed=32)[0]
    named = list(new.named_parameters())
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=512) as engine:
        args = {"enable_weight_updates": True, "weights_dir": str(root)}
        with (
            LiveServer(engine, **args) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            old = _generate(http, prompt)
            assert old["meta_info"]["weight_version"] == "default"

            def post(body: dict[str, Any]) -> httpx.Response:
                return http.post("/update_weights_from_tensor", json=body)

            for body, message in [
                ({"serialized_named_tensors": "%%%"}, "serialized_named_tensors[0]"),
                ({"serialized_named_tensors": []}, "serialized_named_tensors"),
                (
                    {"serialized_named_tensors": _buckets(named, 4), "load_format": "pickle"},
                    "load_format",
                ),
                (
                    {"serialized_named_tensors": _buckets(named, 4), "flush_cache": "yes"},
                    "flush_cache",
                ),
                (
                    {"serialized_named_tensors": _buckets([("model.foo.weight", named[0][1])], 1)},
                    "model.foo.weight",
                ),
            ]:
                r = post(body)
                assert r.status_code == 400, r.text
                assert message in r.json()["error"]["message"]
            assert _generate(http, prompt)["output_ids"] == old["output_ids"]  # untouched

            r = post({"serialized_named_tensors": _buckets(named, 5), "weight_version": "w1"})
            assert r.status_code == 200, r.text
            assert r.json()["success"] and r.json()["weight_version"] == "w1"
            out = _generate(http, prompt)
            assert out["output_ids"] == hf_greedy(new, prompt, 12)
            assert out["meta_info"]["weight_version"] == "w1"
            assert out["meta_info"]["cached_tokens"] == 0  # the cache was flushed

            # from disk: back to the original weights, copied under --weights-dir
            (root / "old").mkdir()
            for f in path.iterdir():
                (root / "old" / f.name).write_bytes(f.read_bytes())
            r = http.post("/update_weights_from_disk", json={"model_path": "../" + path.name})
            assert r.status_code == 400 and "--weights-dir" in r.text
            r = http.post("/update_weights_from_disk", json={"model_path": "old"})
            assert r.status_code == 200, r.text
            assert r.json()["weight_version"] == "2"
            assert _generate(http, prompt)["output_ids"] == old["output_ids"]
            assert http.get("/get_weight_version").json() == {"weight_version": "2"}
        assert_pool_whole(engine)


def test_a_trainer_process_syncs_over_gloo_through_http(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=41)
    named = list(new.named_parameters())
    prompt = prompts_of_lengths([21], 512, seed=42)[0]
    port = free_port()
    group = {"master_port": port, "rank_offset": 1, "world_size": 2, "group_name": "weights"}
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=512) as engine:
        args = {"enable_weight_updates": True}
        with (
            LiveServer(engine, **args) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            r = http.post(
                "/init_weights_update_group", json={**group, "master_address": "10.9.9.9"}
            )
            assert r.status_code == 400 and "--weight-sync-hosts" in r.text
            r = http.post(
                "/init_weights_update_group",
                json={**group, "master_address": "127.0.0.1", "world_size": "2"},
            )
            assert r.status_code == 400 and "world_size" in r.text
            proc = trainer(port, tmp_path / "new")
            try:
                r = http.post(
                    "/init_weights_update_group", json={**group, "master_address": "127.0.0.1"}
                )
                assert r.status_code == 200, r.text
                assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
                body = {
                    "names": [n for n, _ in named],
                    "dtypes": ["float32"] * len(named),
                    "shapes": [list(p.shape) for _, p in named],
                    "group_name": "weights",
                }
                r = http.post(
                    "/update_weights_from_distributed", json={**body, "shapes": [[1]] * len(named)}
                )
                assert r.status_code == 400 and "shape" in r.text
                result: dict[str, httpx.Response] = {}
                sync = threading.Thread(
                    target=lambda: result.update(
                        r=http.post("/update_weights_from_distributed", json=body)
                    )
                )
                sync.start()
                assert proc.stdin is not None
                proc.stdin.write("send\n")
                proc.stdin.flush()
                sync.join(60)
                assert result["r"].status_code == 200, result["r"].text
                assert result["r"].json()["weight_version"] == "1"
                assert _generate(http, prompt)["output_ids"] == hf_greedy(new, prompt, 12)
                r = http.post("/destroy_weights_update_group", json={"group_name": "weights"})
                assert r.status_code == 200, r.text
            finally:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(30)


def test_pause_continue_release_resume_over_http(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    prompt = prompts_of_lengths([15], 512, seed=51)[0]
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=512) as engine:
        args = {"enable_weight_updates": True}
        with (
            LiveServer(engine, **args) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            expected = _generate(http, prompt)["output_ids"]
            r = http.post("/pause_generation", json={"mode": "in_place"})
            assert r.status_code == 200, r.text
            result: dict[str, Any] = {}
            waiting = threading.Thread(target=lambda: result.update(out=_generate(http, prompt)))
            waiting.start()
            waiting.join(0.5)
            assert waiting.is_alive()  # queued while paused
            assert http.post("/continue_generation").status_code == 200
            waiting.join(30)
            assert result["out"]["output_ids"] == expected
            assert http.post("/pause_generation", json={"mode": "later"}).status_code == 400

            r = http.post("/release_memory_occupation", json={"tags": ["kv_cache"]})
            assert r.status_code == 200, r.text
            r = http.post("/generate", json={"input_ids": prompt, "sampling_params": GREEDY})
            assert r.status_code == 400 and "resume_memory_occupation" in r.text
            assert (
                http.post("/resume_memory_occupation", json={"tags": ["kv_cache"]}).status_code
                == 200
            )
            r = http.post("/resume_memory_occupation", json={"tags": ["kv_cache"]})
            assert r.status_code == 400 and "not released" in r.text
            r = http.post("/release_memory_occupation", json={"tags": "weights"})
            assert r.status_code == 400 and "tags" in r.text
            assert _generate(http, prompt)["output_ids"] == expected
        assert_pool_whole(engine)
