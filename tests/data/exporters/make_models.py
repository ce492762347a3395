#!/usr/bin/env python3
"""Generate small real ONNX exports + ONNX Runtime reference outputs for cipherml tests.

Run inside the venv described in README.md:
    /tmp/exportenv/bin/python tests/data/exporters/make_models.py [--only name1,name2]

Deterministic: fixed seeds, single-threaded torch / TF / ORT.
Data is read from /work/shared/data (override with CIPHERML_DATA).
Outputs are written next to this script.
"""
import os
import sys
import collections

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import onnx
import onnxruntime as ort

DATA = os.environ.get("CIPHERML_DATA", "/work/shared/data")
OUT = os.path.dirname(os.path.abspath(__file__))
SEED = 0


def load(name):
    return (np.load(f"{DATA}/{name}_train_x.npy").astype(np.float32),
            np.load(f"{DATA}/{name}_train_y.npy").astype(np.int64),
            np.load(f"{DATA}/{name}_test_x.npy").astype(np.float32),
            np.load(f"{DATA}/{name}_test_y.npy").astype(np.int64))


def op_counts(path):
    m = onnx.load(path)
    c = collections.Counter()
    for n in m.graph.node:
        c[n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"] += 1
    return dict(sorted(c.items()))


def describe(path):
    m = onnx.load(path)
    onnx.checker.check_model(m)
    opsets = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    init_names = {i.name for i in m.graph.initializer}
    ins = []
    for i in m.graph.input:
        if i.name in init_names:
            continue
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                for d in i.type.tensor_type.shape.dim]
        ins.append((i.name, dims))
    outs = [o.name for o in m.graph.output]
    return opsets, ins, outs


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


SUMMARY = []


def finish(name, path, expected, classes, y_true, notes=""):
    expected = np.ascontiguousarray(expected.astype("<f4"))
    classes = np.ascontiguousarray(classes.astype("<i8"))
    np.save(f"{OUT}/{name}.expected.npy", expected)
    np.save(f"{OUT}/{name}.classes.npy", classes)
    acc = float((classes == y_true).mean())
    opsets, ins, outs = describe(path)
    ops = op_counts(path)
    size = os.path.getsize(path)
    assert size < 300 * 1024, f"{name} too large: {size}"
    SUMMARY.append(dict(name=name, acc=acc, opsets=opsets, inputs=ins, outputs=outs,
                        ops=ops, size=size, expected_shape=expected.shape, notes=notes))
    print(f"[{name}] acc={acc:.4f} size={size}B opsets={opsets} inputs={ins} outputs={outs}")
    print(f"[{name}] ops={ops}")
    if notes:
        print(f"[{name}] notes: {notes}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- torch
def torch_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True)

    class NormMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = (x - 0.5) / 0.25
            x = x.view(x.size(0), -1)
            return self.fc2(F.relu(self.fc1(x)))

    class CnnView(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv(x)))
            x = x.view(x.size(0), -1)
            return self.fc(x)

    class ResNetProj(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.b1_main = nn.Sequential(
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.b1_short = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
            self.b2_main = nn.Sequential(
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x)
            x = F.relu(self.b1_main(x) + self.b1_short(x))
            x = F.relu(self.b2_main(x) + x)
            x = self.pool(x)
            x = torch.flatten(x, 1)
            return self.fc(x)

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(1, 4, 1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
            x = self.pool(x)
            x = torch.flatten(x, 1)
            return self.fc(x)

    class Activations(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(64, 32), nn.ReLU6(), nn.Linear(32, 32), nn.Tanh(),
                nn.Linear(32, 32), nn.LeakyReLU(0.1), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    class PadAvgPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv(x))          # 6x6
            x = F.pad(x, (1, 1, 1, 1))        # 8x8, explicit zero Pad
            x = self.pool(x)                  # 4x4
            x = torch.flatten(x, 1)
            return self.fc(x)

    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.Hardswish(),
                nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.PReLU(8),
                nn.Conv2d(8, 8, 1, groups=2), nn.Hardsigmoid(),
                nn.Flatten(), nn.Linear(512, 10))

        def forward(self, x):
            return self.net(x)

    class Conv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 5, padding=2)
            self.pool = nn.MaxPool1d(2)
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv(x)))
            x = torch.flatten(x, 1)
            x = self.drop(x)
            return self.fc(x)

    class GemmSigmoidSoftmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 16)
            self.fc2 = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.flatten(x, 1)
            x = torch.sigmoid(self.fc1(x))
            return torch.softmax(self.fc2(x), dim=1)

    # name, class, opset, input-shape transform, output-is-probabilities, epochs, lr
    specs = [
        ("torch_norm_mlp", NormMLP, 13, None, False, 20, 1e-2),
        ("torch_cnn_view", CnnView, 14, None, False, 20, 1e-2),
        ("torch_resnet_proj", ResNetProj, 17, None, False, 15, 1e-2),
        ("torch_concat", Concat, 15, None, False, 20, 1e-2),
        ("torch_activations", Activations, 16, None, False, 20, 1e-2),
        ("torch_pad_avgpool", PadAvgPool, 13, None, False, 20, 1e-2),
        ("torch_depthwise", Depthwise, 17, None, False, 20, 1e-2),
        ("torch_conv1d", Conv1d, 13, (-1, 1, 64), False, 20, 1e-2),
        ("torch_gemm_sigmoid_softmax", GemmSigmoidSoftmax, 13, None, True, 30, 1e-2),
    ]

    xtr, ytr, xte, yte = load("digits")
    for name, cls, opset, reshape, probs_out, epochs, lr in specs:
        if ONLY and name not in ONLY:
            continue
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        a_tr = xtr.reshape(reshape) if reshape else xtr
        a_te = np.ascontiguousarray(xte.reshape(reshape) if reshape else xte)
        X = torch.from_numpy(a_tr)
        Y = torch.from_numpy(ytr)
        model = cls()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(SEED)
        bs = 64
        model.train()
        for ep in range(epochs):
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X), bs):
                idx = perm[i:i + bs]
                out = model(X[idx])
                if probs_out:
                    loss = F.nll_loss(torch.log(out.clamp_min(1e-12)), Y[idx])
                else:
                    loss = F.cross_entropy(out, Y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        path = f"{OUT}/{name}.onnx"
        dummy = torch.from_numpy(a_te[:2])
        torch.onnx.export(
            model, (dummy,), path,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False)
        sess = ort_session(path)
        (y,) = sess.run(["output"], {"input": a_te})
        with torch.no_grad():
            ref = model(torch.from_numpy(a_te)).numpy()
        diff = float(np.abs(ref - y).max())
        print(f"[{name}] max|torch - ort| = {diff:.3e}")
        assert diff < 1e-4
        ops = op_counts(path)
        notes = []
        if name == "torch_norm_mlp":
            assert "Sub" in ops and "Div" in ops, ops
            notes.append("Sub/Div by scalar constants survive export")
        if name == "torch_cnn_view":
            for o in ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape"):
                assert o in ops, (o, ops)
            notes.append("x.view(x.size(0),-1) -> Shape/Gather/Unsqueeze/Concat -> Reshape chain")
        if name == "torch_resnet_proj":
            notes.append("BatchNormalization nodes present" if "BatchNormalization" in ops
                         else "BatchNorm folded into Conv by the exporter (eval mode + constant folding)")
        if name == "torch_pad_avgpool":
            assert "Pad" in ops, ops
        if name == "torch_depthwise":
            for o in ("HardSwish", "HardSigmoid", "PRelu"):
                assert o in ops, (o, ops)
        if name == "torch_conv1d":
            notes.append("Dropout node present" if "Dropout" in ops
                         else "Dropout removed by the exporter (eval mode)")
        if name == "torch_activations":
            assert "Clip" in ops, ops
        finish(name, path, y, y.argmax(1), yte, "; ".join(notes))


# ----------------------------------------------------------------------------- keras
def keras_models():
    name = "keras_cnn_nhwc"
    if ONLY and name not in ONLY and name + "_transposes" not in ONLY:
        return
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    xtr, ytr, xte, yte = load("digits")
    xtr = np.ascontiguousarray(xtr.transpose(0, 2, 3, 1))  # NCHW -> NHWC
    xte = np.ascontiguousarray(xte.transpose(0, 2, 3, 1))
    L = tf.keras.layers
    model = tf.keras.Sequential([
        L.Input(shape=(8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(8, 3, padding="same", activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(10),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xtr, ytr, batch_size=32, epochs=80, shuffle=True, verbose=0)
    ref = model.predict(xte, verbose=0)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    from tf2onnx.optimizer import _get_optimizers
    # 1) the ordinary export (all default tf2onnx optimizers).
    # 2) an extra variant with the transpose / global-pool optimizers disabled, so that the
    #    NHWC<->NCHW Transpose nodes and the ReduceMean of GlobalAveragePooling2D stay in the
    #    graph (with a 1-channel input the default optimizer turns the input Transpose into a
    #    Reshape and ReduceMean into GlobalAveragePool).
    no_tr = {k: v for k, v in _get_optimizers().items()
             if k not in ("optimize_transpose", "global_pool_optimizer")}
    for fname, optimizers in ((name, None), (name + "_transposes", no_tr)):
        path = f"{OUT}/{fname}.onnx"
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path,
                                   optimizers=optimizers)
        sess = ort_session(path)
        in_name = sess.get_inputs()[0].name
        out_name = sess.get_outputs()[0].name
        (y,) = sess.run([out_name], {in_name: xte})
        diff = float(np.abs(ref - y).max())
        print(f"[{fname}] max|keras - ort| = {diff:.3e}")
        assert diff < 1e-4
        ops = op_counts(path)
        if optimizers is not None:
            assert "Transpose" in ops and "ReduceMean" in ops, ops
            notes = ("tf2onnx optimizers 'optimize_transpose' and 'global_pool_optimizer' disabled; "
                     "Transpose + ReduceMean kept")
        else:
            notes = ("default tf2onnx optimizers: " +
                     ("Transpose present, " if "Transpose" in ops else
                      "no Transpose (input NHWC->NCHW transpose of a 1-channel tensor became a Reshape), ") +
                     ("ReduceMean present" if "ReduceMean" in ops else
                      "no ReduceMean (GlobalAveragePooling2D emitted as GlobalAveragePool + Squeeze)"))
        finish(fname, path, y, y.argmax(1), yte, notes)


# ----------------------------------------------------------------------------- sklearn
def skl_models():
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    for name, ds, nfeat in (("skl_logreg_cancer", "cancer", 30), ("skl_logreg_digits", "digits", 64)):
        if ONLY and name not in ONLY:
            continue
        xtr, ytr, xte, yte = load(ds)
        xtr = xtr.reshape(len(xtr), -1)
        xte = np.ascontiguousarray(xte.reshape(len(xte), -1))
        clf = LogisticRegression(max_iter=5000, random_state=SEED).fit(xtr, ytr)
        types = [("input", FloatTensorType([None, nfeat]))]
        target = {"": 13, "ai.onnx.ml": 1}
        onx = convert_sklearn(clf, initial_types=types, target_opset=target, name=name)  # fixed graph name (default is a random uuid)
        path = f"{OUT}/{name}.onnx"
        onnx.save(onx, path)
        sess = ort_session(path)
        label, probs = sess.run(["output_label", "output_probability"], {"input": xte})
        classes = list(clf.classes_)
        P = np.array([[d[c] for c in classes] for d in probs], dtype=np.float32)
        # cross-check with a zipmap-free conversion (not saved)
        onx2 = convert_sklearn(clf, initial_types=types, target_opset=target,
                               options={id(clf): {"zipmap": False}})
        sess2 = ort.InferenceSession(onx2.SerializeToString(), providers=["CPUExecutionProvider"])
        _, P2 = sess2.run(None, {"input": xte})
        assert np.abs(P - P2).max() < 1e-6
        diff = float(np.abs(clf.predict_proba(xte) - P).max())
        print(f"[{name}] max|sklearn - ort| probs = {diff:.3e}")
        assert (label == clf.predict(xte)).mean() > 0.99
        finish(name, path, P, np.asarray(label), yte, "")


ONLY = None

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        ONLY = set(sys.argv[2].split(","))
    print("versions: numpy", np.__version__, "onnx", onnx.__version__, "onnxruntime", ort.__version__)
    skl_models()
    torch_models()
    keras_models()
    print("\nSUMMARY")
    for s in SUMMARY:
        print(s)
