"""The Python package's own parts, without torch: run by crates/py/tests/python.rs in CI
(`cargo test --workspace`) against the extension module cargo built."""

import io
import json
import os
import subprocess
import sys
import unittest
from contextlib import redirect_stdout

import vramlab
from vramlab import _native
from vramlab._optim import optimizer_options

REPO = os.environ.get("VRAMLAB_REPO", os.path.join(os.path.dirname(__file__), "..", ".."))
PT2 = os.path.join(REPO, "crates", "pt2", "tests", "fixtures")


class FakeOptimizer:
    """Duck-typed torch.optim.Optimizer: its class name and param_groups are what is read."""

    def __init__(self, *groups):
        self.param_groups = [dict(g, params=[]) for g in groups]


def optimizer(cls_name, *groups):
    return type(cls_name, (FakeOptimizer,), {})(*groups)


class PlansMatchPyTorch(unittest.TestCase):
    def test_pt2_archives_plan_pytorchs_measured_cpu_peaks(self):
        # pt2_fixtures.json: real PyTorch 2.15 on the CPU, fp32 Adam, steps 1 and 2.
        with open(os.path.join(PT2, "pt2_fixtures.json")) as f:
            rec = json.load(f)
        checked = 0
        for file, fx in rec["fixtures"].items():
            if fx["mode"] != "train":
                continue
            for batch, want in rec["pytorch_cpu_adam_peaks"][fx["model"]].items():
                r = vramlab.memory(os.path.join(PT2, file), batch_size=int(batch), profile="pytorch-cpu")
                self.assertEqual([s["peak_bytes"] for s in r.steps], want, (file, batch))
                self.assertEqual(r.num_params, fx["num_params"], file)
                checked += 1
        self.assertEqual(checked, 8)

    def test_summary_counts_simple_cnn_like_pytorch(self):
        s = vramlab.summary("simple_cnn")
        self.assertEqual(s.num_params, 62006)
        self.assertEqual(s.layers[0]["name"], "conv1")
        self.assertEqual(s["input_shape"], [3, 32, 32])


class Options(unittest.TestCase):
    def test_keyword_arguments_are_the_clis_options(self):
        r = vramlab.memory("resnet18", input_size=(3, 32, 32), num_classes=10, batch_size=16,
                           optimizer="sgd", momentum=0.9, nesterov=True, profile="pytorch-cpu")
        self.assertEqual(r["optimizer"], "SGD(momentum=0.9, nesterov=True)")
        self.assertEqual(r["input_shape"], [3, 32, 32])
        self.assertEqual(r["batch_size"], 16)
        self.assertIsNone(r.device)  # no caching allocator on the CPU profile

    def test_inference_passes_no_optimizer(self):
        # The CLI refuses optimizer options in inference; the default passes none.
        r = vramlab.memory("resnet18", batch_size=2, mode="inference")
        self.assertEqual(r["mode"], "inference")
        self.assertEqual(vramlab.memory("resnet18", batch_size=2)["optimizer"], "Adam()")

    def test_an_optimizer_instance_is_read_like_its_options(self):
        sgd = optimizer("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0, "foreach": None})
        by_instance = vramlab.memory("resnet18", batch_size=4, optimizer=sgd)
        by_name = vramlab.memory("resnet18", batch_size=4, optimizer="sgd", momentum=0.9, nesterov=True)
        self.assertEqual(by_instance.to_dict(), by_name.to_dict())
        args, notes = optimizer_options(
            optimizer("AdamW", {"amsgrad": True, "weight_decay": 0.05, "foreach": False, "fused": None})
        )
        self.assertEqual(args, ["--optimizer", "adamw", "--amsgrad", "--weight-decay=0.05",
                                "--optimizer-impl", "for-loop"])
        self.assertEqual(notes, [])

    def test_param_groups_that_differ_in_state_are_named(self):
        opt = optimizer("SGD", {"momentum": 0.9}, {"momentum": 0.0})
        _, notes = optimizer_options(opt)
        self.assertEqual(notes, ["SGD param group 1 differs from group 0 in momentum: planned with group 0's settings"])

    def test_an_optimizer_vramlab_does_not_plan_is_refused(self):
        with self.assertRaisesRegex(ValueError, "got Lion"):
            vramlab.memory("resnet18", optimizer=optimizer("Lion", {}))

    def test_fit_on_a_card(self):
        f = vramlab.fit("resnet50", gpu="rtx-4090", optimizer="adamw")
        self.assertEqual(f["gpu"], "NVIDIA GeForce RTX 4090 24 GB")
        self.assertGreater(f.max_batch_size, 0)
        self.assertLessEqual(f["peak_bytes_at_max"], f.budget_bytes)
        self.assertGreater(f["peak_bytes_at_max_plus_one"], f.budget_bytes)
        self.assertIn("rtx-4090", [g["name"] for g in vramlab.gpus()])


    def test_fit_compares_cards_given_as_a_list(self):
        f = vramlab.fit("resnet50", gpu=["t4", "h100"])
        self.assertEqual(len(f), 2)
        self.assertEqual([c["gpu"] for c in f.to_dict()], ["NVIDIA T4 16 GB", "NVIDIA H100 80 GB"])
        self.assertLess(f[0]["max_batch_size"], f[1]["max_batch_size"])
        with self.assertRaisesRegex(KeyError, "compared 2 cards"):
            f.max_batch_size


class Errors(unittest.TestCase):
    def test_the_clis_error_line_is_raised(self):
        with self.assertRaisesRegex(vramlab.VramlabError, "^batch size must be at least 1, got 0$"):
            vramlab.memory("resnet50", batch_size=0)
        with self.assertRaisesRegex(vramlab.VramlabError, "unknown model `resnet5`"):
            vramlab.memory("resnet5")
        with self.assertRaisesRegex(vramlab.VramlabError, "unexpected argument '--no-such-option'"):
            vramlab.memory("resnet18", no_such_option=3)

    def test_messages_name_the_option(self):
        with self.assertRaisesRegex(vramlab.VramlabError, "--batch-size"):
            vramlab.memory("resnet18", batch_size=-1)
        with self.assertRaisesRegex(vramlab.VramlabError, "give the card: --gpu NAME .* or its memory with --memory SIZE"):
            vramlab.fit("resnet18")
        with self.assertRaisesRegex(vramlab.VramlabError, "printed no result"):
            vramlab.memory("resnet18", help=True)

    def test_a_subclass_of_a_torch_optim_class_is_read_as_that_class(self):
        adam = optimizer("Adam", {"amsgrad": 1})
        mine = type("MyAdam", (type(adam),), {})({"amsgrad": 1})
        self.assertEqual(optimizer_options(mine)[0], ["--optimizer", "adam", "--amsgrad"])

    def test_input_size_is_checked_before_the_planner(self):
        for bad in [(3, 0, 32), (3, 32.0, 32), (), (True, 2, 2), (3, 32), 32]:
            with self.assertRaises(vramlab.VramlabError, msg=bad):
                vramlab.memory("resnet18", input_size=bad)

    def test_only_planning_commands_run_in_process(self):
        code, out, notes, error = _native.run(["train", "lenet5", "--data", "fashion-mnist"])
        self.assertEqual((code, out), (2, ""))
        self.assertIn("does not run in-process", error)
        self.assertEqual(_native.run([])[0], 2)

    def test_a_missing_model_file_is_named(self):
        with self.assertRaisesRegex(vramlab.VramlabError, "nowhere.pt2"):
            vramlab.memory("nowhere.pt2")


class Display(unittest.TestCase):
    def test_repr_is_the_clis_table_and_notes_come_first(self):
        r = vramlab.memory(os.path.join(PT2, "small_resnet_train.pt2"), batch_size=8)
        text = repr(r)
        self.assertTrue(text.startswith("note: the export traced a fixed batch of 2"), text[:200])
        self.assertIn("Peak of step 1:", text)
        self.assertIn("{:,} B".format(r.steps[0]["peak_bytes"]), text)
        html = r._repr_html_()
        self.assertTrue(html.startswith("<pre>") and "&lt;" not in html[:5])

    def test_to_dict_is_a_copy(self):
        r = vramlab.memory("simple_cnn", batch_size=2)
        d = r.to_dict()
        d["peak_bytes"] = -1
        self.assertNotEqual(r.peak_bytes, -1)


class Main(unittest.TestCase):
    def run_main(self, *args):
        return subprocess.run([sys.executable, "-m", "vramlab", *args], capture_output=True, text=True)

    def test_python_m_vramlab_runs_the_planning_commands(self):
        p = self.run_main("memory", "simple_cnn", "--batch-size", "8", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["batch_size"], 8)
        p = self.run_main("memory", "simple_cnn", "--batch-size", "-1")
        self.assertEqual(p.returncode, 2)
        self.assertEqual(p.stdout, "")

    def test_export_needs_module_colon_builder(self):
        p = self.run_main("export", "torchvision.models.resnet18", "out.pt2", "--input", "3x32x32")
        self.assertEqual(p.returncode, 2)
        self.assertIn("expected MODULE:BUILDER", p.stderr)


if __name__ == "__main__":
    unittest.main()
