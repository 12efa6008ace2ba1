"""A Sphinx extension that drops repeated <script> entries from each page.

sphinx-thebe (which Jupyter Book 1 always loads) adds its inline configuration script twice, and
the second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in the browser's
console on every page. Keeping the first of identical scripts removes the error and nothing else.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return str(filename), tuple(sorted((str(k), str(v)) for k, v in attributes.items()))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
