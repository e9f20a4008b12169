"""Asynchronous GRPO with `r1kit serve-gen` as the generator (rollout.engine=server, r1kit.rollout.remote_worker):
lag 0 is bitwise the synchronous server run (evaluation included), a lag-1 run killed and resumed equals the
uninterrupted one bitwise, and a server that dies stops the trainer with one line naming it within the timeout.

Marked `vllm` (needs vLLM, the server runs as a subprocess); one server for the module, killed by its last test.
"""

import json
import time

import pytest
import torch

import r1kit
from r1kit.recipe import load_recipe
from r1kit.rollout.http import ServiceClient, ServiceError
from r1kit.trainer import train
from test_distributed import free_port
from test_trainer import FAST, weights
from test_vllm_server import TOKEN, GenServer

pytestmark = pytest.mark.vllm
MODEL = "builtin:tiny-sft"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = GenServer(MODEL, free_port(), tmp_path_factory.mktemp("serve") / "serve-gen.log").start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("R1KIT_SERVICE_TOKEN", TOKEN)


def run_cfg(server, out, *extra):
    return load_recipe(None, [f"model.name_or_path={MODEL}", f"output_dir={out}", "name=t", *FAST,
                              "rollout.engine=server", f"services.generation_url={server.url}", "services.retries=1",
                              "services.backoff_s=0.5", "services.timeout_s=60", "eval.before=false", *extra])


def lagged(k: int, *extra):
    return ["rollout.asynchronous.mode=fixed_lag", f"rollout.asynchronous.lag={k}",
            "rollout.asynchronous.timeout_s=120", *extra]


def metrics(out):
    return [json.loads(x) for x in (out / "t" / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    wa, wb = weights(a / "t" / "final"), weights(b / "t" / "final")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_r1kit_under_test_is_this_checkout():
    import pathlib

    assert pathlib.Path(r1kit.__file__).resolve().parent == pathlib.Path(__file__).resolve().parent.parent / "r1kit"


def test_lag_zero_on_the_server_is_bitwise_the_synchronous_server_run(server, tmp_path):
    """Evaluation during the run (step 2) samples through the thread's queue, after the run from the settled
    server: both from the trainer's newest weights, as in the synchronous run."""
    evals = ["train.max_steps=3", "eval.every=2", "eval.after=true"]
    sync = train(run_cfg(server, tmp_path / "sync", *evals))
    lag0 = train(run_cfg(server, tmp_path / "lag0", *evals, *lagged(0)))
    assert same_weights(tmp_path / "sync", tmp_path / "lag0")
    a, b = metrics(tmp_path / "sync"), metrics(tmp_path / "lag0")
    assert [m["reward"] for m in a] == [m["reward"] for m in b]
    assert [m["async/staleness_max"] for m in b] == [0.0, 0.0, 0.0]
    keys = ("eval/greedy_accuracy", "eval/mean_length")
    assert [a[1][k] for k in keys] == [b[1][k] for k in keys]  # step 2's evaluation
    assert sync["mean_length_after"] == lag0["mean_length_after"]
    assert sync["accuracy_after"] == lag0["accuracy_after"]


def test_a_lag_one_server_run_killed_and_resumed_equals_the_uninterrupted_run(server, tmp_path):
    """Step 3 trains a batch sampled from version 1; the checkpoint after step 2 holds it (generated, drained)."""
    import reward_fixtures

    straight = tmp_path / "straight"
    common = ["train.max_steps=4", "train.save_every=2", "eval.after=false", *lagged(1)]
    train(run_cfg(server, straight, *common))
    assert [m["async/staleness_max"] for m in metrics(straight)] == [0.0, 1.0, 1.0, 1.0]

    reward_fixtures.CALLS["n"] = 0
    crashing = [*common, "rewards=[{name: reward_fixtures.fail_on_third_call}]"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(run_cfg(server, tmp_path / "resumed", *crashing))
    saved = torch.load(tmp_path / "resumed" / "t" / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    in_flight = saved["run_state"]["in_flight"]
    assert in_flight["next_batch"] == 3 and [list(rank) for rank in in_flight["ranks"]] == [[3]]
    assert {c["policy_version"] for c in in_flight["ranks"][0][3]["completions"]} == {1}
    train(run_cfg(server, tmp_path / "resumed", *crashing, "train.resume_from=latest"))
    assert same_weights(straight, tmp_path / "resumed")
    assert [m["step"] for m in metrics(tmp_path / "resumed")] == [1, 2, 3, 4]


def test_the_thread_pushes_through_the_collective_transport_the_same_weights_as_over_http(server, tmp_path):
    """The thread shares the engine's transport group, formed on the training thread when the engine was built."""
    common = ["train.max_steps=3", "eval.after=false", *lagged(1)]
    train(run_cfg(server, tmp_path / "http", *common))
    train(run_cfg(server, tmp_path / "collective", *common, "services.weight_transfer=collective"))
    assert same_weights(tmp_path / "http", tmp_path / "collective")
    assert [m["async/staleness_max"] for m in metrics(tmp_path / "collective")] == [0.0, 1.0, 1.0]


def test_bounded_staleness_on_the_server_holds_its_bound(server, tmp_path):
    bounded = ["rollout.asynchronous.mode=bounded", "rollout.asynchronous.max_staleness=1",
               "rollout.asynchronous.timeout_s=120", "train.max_steps=4", "eval.after=false"]
    train(run_cfg(server, tmp_path, *bounded))
    lines = metrics(tmp_path)
    assert [m["async/batch"] for m in lines] == [1, 2, 3, 4]
    assert all(m["async/staleness_max"] <= 1 for m in lines) and lines[0]["async/staleness_max"] == 0
    assert any(m["async/staleness_max"] == 1 for m in lines)  # batches were generated ahead, from older weights


def test_a_server_that_dies_stops_the_generation_thread_with_one_line_naming_it(server, tmp_path):
    """Last in the module: it kills the module's server."""
    from r1kit.config import ModelCfg
    from r1kit.models import load_model, load_tokenizer, resolve_model_path
    from r1kit.rollout.remote import RemoteEngine
    from r1kit.rollout.remote_worker import ServerGenerator
    from r1kit.rollout.worker import Request
    from r1kit.types import SamplingParams

    path = resolve_model_path(MODEL)
    tok = load_tokenizer(path)
    model = load_model(ModelCfg(name_or_path=path), tok)
    client = ServiceClient("generation server", server.url, token=TOKEN, timeout_s=10, retries=1, backoff_s=0.5)
    gen = ServerGenerator(RemoteEngine(client, MODEL, tok), version=0, timeout_s=60)
    try:
        gen.publish(model, 1)
        gen.submit(Request(batch=1, prompts=[[1, 2, 3]], n=2, sampling=SamplingParams(4, seed=1), version=1,
                           exact=True))
        assert gen.receive("batch 1")[:2] == (1, 1) and gen.pushes == [1]
        server.stop()
        gen.publish(model, 2)
        gen.submit(Request(batch=2, prompts=[[1, 2, 3]], n=2, sampling=SamplingParams(4, seed=2), version=2,
                           exact=True))
        start = time.monotonic()
        with pytest.raises(ServiceError) as err:
            gen.receive("batch 2")
        assert time.monotonic() - start < 60  # the client's retries, well inside the limit: no hang
        message = str(err.value)
        assert f"generation server at {server.url}/r1kit/update_weights did not answer after 2 tries" in message
        assert message.startswith("asynchronous generation stopped on batch 2") and "\n" not in message, message
    finally:
        gen.close()
