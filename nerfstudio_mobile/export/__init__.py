"""Export a trained MobileR2L student for phones (`ns-export-mobile`), and verify the exports on Linux.

    student ─► sidecar.ExportFrame (output size, intrinsics, near/far, encoding, dataparser transform)
            ─► graphs: `rays` (encoded rays in) or `pose` (world camera-to-world in, rays + encoding in the graph)
            ─► coreml (fp16 ML program, optional int8 / palette compression) or onnx (fp32)
            ─► coreml_verify + mil (read the package back, execute it with torch) or onnxruntime
            ─► verify: PSNR against the torch student on the test views

Modules that need the optional `export` packages (coremltools, onnx, onnxruntime, scikit-learn) import them
at module level with an error that names the package to install; the CLI imports each format lazily.
"""
