"""Export a trained MobileR2L student for phones (`ns-export-mobile`), and verify the exports on Linux.

    student ─► sidecar.ExportFrame (output size, intrinsics, near/far, encoding, dataparser transform)
            ─► graphs: `rays` (encoded rays in) or `pose` (world camera-to-world in, rays + encoding in the graph)
            ─► coreml (fp16 ML program; int8 / palette / grouped-palette weights, w8a8) or onnx (fp32, onnx_int8)
            ─► coreml_verify + mil (read the package back, execute it with torch) or onnxruntime
            ─► verify: PSNR against the torch student on the test views

Int8 activations (Core ML w8a8, ONNX int8) are calibrated on the poses of the student's pseudo views
(`calibration`), never on the test views that verify them.

Modules that need the optional `export` packages (coremltools, onnx, onnxruntime, scikit-learn, ml-dtypes) import
them at module level with an error that names the package to install; the CLI imports each format lazily.
"""
