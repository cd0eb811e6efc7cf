"""What a hub user gets: a saved folder loads under every Auto class with trust_remote_code=True in a
fresh process where hf_gpt_scratch cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from conftest import tiny_config

from hf_gpt_scratch import GPTScratchForCausalLM

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_gpt_scratch"] = None  # the package is NOT importable: only the shipped code is
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    folder, x = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    report = {"config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__}
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(x)
        key = "last_hidden_state" if auto is AutoModel else "logits"
        report[auto.__name__] = {
            "class": type(model).__name__, "module": type(model).__module__, "output": out[key].tolist()
        }
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    report["generated"] = lm.generate(x[:1, :3], max_new_tokens=5, do_sample=False).tolist()
    print(json.dumps(report))
    """
)


def test_saved_folder_loads_under_every_head_without_the_package(tmp_path):
    model = GPTScratchForCausalLM(tiny_config(pad_token_id=0)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)

    saved = json.loads((folder / "config.json").read_text())
    assert set(saved["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"
    }
    assert (folder / "modeling_gpt_scratch.py").exists() and (folder / "configuration_gpt_scratch.py").exists()
    # the shipped code only imports its sibling, never the package
    shipped = (folder / "modeling_gpt_scratch.py").read_text()
    assert "from .configuration_gpt_scratch import" in shipped and "hf_gpt_scratch" not in shipped.split('"""', 2)[2]

    x = torch.randint(1, 97, (2, 7))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), json.dumps(x.tolist())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])

    assert report["config"] == "GPTScratchConfig"
    for auto, cls in [
        ("AutoModel", "GPTScratchModel"),
        ("AutoModelForCausalLM", "GPTScratchForCausalLM"),
        ("AutoModelForSequenceClassification", "GPTScratchForSequenceClassification"),
    ]:
        assert report[auto]["class"] == cls
        assert report[auto]["module"].startswith("transformers_modules."), report[auto]["module"]
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(report["AutoModelForCausalLM"]["output"]), model(x).logits)
        torch.testing.assert_close(
            torch.tensor(report["AutoModel"]["output"]), model.model(x).last_hidden_state
        )
    expected = model.generate(x[:1, :3], max_new_tokens=5, do_sample=False)
    assert report["generated"] == expected.tolist()
    # the classifier head is new (random) but must produce num_labels logits per sequence
    assert torch.tensor(report["AutoModelForSequenceClassification"]["output"]).shape == (2, 2)
