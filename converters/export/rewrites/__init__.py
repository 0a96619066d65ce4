"""Export-only rewrites: each cn_clip tower in an equal form that ncnn can express.

One module per tower family: `vit`, `resnet` (with its attention pool) and
`bert`. Each builds a new module around the cn_clip model's own submodules
and parameters; the model and cn_clip's classes are never modified. Every
rewrite is proven equal to cn_clip's `encode_image`/`encode_text` by
`tests/export/rewrites/` before any conversion relies on it.

Export modules run one sample at a time (batch 1), the way an app runs ncnn.
Which rewrite a tower gets follows from its family in the config
(`converters.export.towers`).
"""
