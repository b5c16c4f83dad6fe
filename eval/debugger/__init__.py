"""The trace debugger: read, compare, fork and chat with agent traces (`python -m eval.debugger RUN`).

    sources.py      what a run directory holds: traces, forks, metrics, settings, policies, tokenizer
    index.py        a lazy index over a trace file: line offsets and a small row per trace; follows appends
    rows.py         a trace's row for the overview, and the filters and sorts over rows
    views.py        the trajectory, tokens and group views as plain data
    forking.py      the fork request, the policies and retrievers a fork may use, the record it is saved as
    app.py          the FastAPI app: the JSON API, the fork stream, the run's files, the page
    static/         the page: plain HTML, CSS and JavaScript modules, no build step, no CDN
    terminal.py     the views for a terminal (rich), for `eval.show` and `eval.chat`
    browser.py      a headless Chromium over a served app (screenshots, browser tests)
    screenshots.py  the views of a run rendered to PNG
"""
