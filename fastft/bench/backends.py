"""The backends ``fastft bench`` measures, by name (no heavy imports: ``fastft bench --help`` lists them)."""

BACKENDS = {
    "hf-eager": "Hugging Face PyTorch, attn_implementation='eager'",
    "fastft-torch": "PyTorch via fastft.load(backend='torch'): fused attention when fastft.swap exists, else SDPA",
    "ort-plain": "plain torch.onnx export, no offline optimisation, ONNX Runtime default graph optimisation",
    "peer-fp32": "peer pipeline fp32: ORT transformers optimizer (as Optimum does it)",
    "peer-int8": "peer pipeline INT8: ORT transformers optimizer + quantize_dynamic (as Optimum does it)",
    "fastft-fp32": "fastft export model.onnx served by fastft.load",
    "fastft-int8": "fastft export --int8 model_int8.onnx served by fastft.load(int8=True)",
}
