"""Showing results: PNG figures (plots), the one colour convention for maps (colors, view_colors),
SpRAy's clustering math (spray), the map explorer's queries and panels (view_query, view_analysis,
view_static/) and the FiftyOne loader an export copies (fiftyone_loader).

One home for everything that draws or serves, so every tool shows a map the same way
(docs/design.md §3). Reads outputs through storage only; imports no command, no Ray.
"""
