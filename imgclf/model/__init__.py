"""The trained-model contract, shared by training and every consumer of a trained model.

preprocessing.py  `Preprocessing` (img_size, resize_size, mean, std) and `EvalPreset` applying it
factory.py        `build_model(arch, num_classes, pretrained)`, `ARCHITECTURES`, `head`
weights.py        the self-contained weights file: `WeightsFile`, `save_weights`, `load_weights`
spec.py           `ModelSpec`: classes + preprocessing inside every exported file
export.py         weights file → ONNX (opset 18, dynamic batch) or TorchScript
engines.py        `TorchEngine`, `TorchScriptEngine`, `OnnxRuntimeEngine`: a batch → logits
single_image.py   the eval preset written into a reused engine input (`Predictor.classify`)
predictor.py      `Predictor` (spec + engine) and `load_predictor`, the loading policy
tensorfile.py     `load_tensor_file`: torch.load with weights_only and a one-sentence error

Nothing here imports Catalyst or hydra-slayer (tests/model/test_model_no_catalyst.py checks it).
"""
