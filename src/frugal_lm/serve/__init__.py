"""`frugal serve`: run folders, aliases, model folders and ARPA files over HTTP.

    models.py    what a served model can do (classify, ner, score, fill-mask, generate) and how it loads
    batching.py  the micro-batcher: concurrent requests share forward passes, off the event loop
    app.py       the FastAPI app: frugal's routes, errors, API key, limits, the web page and the runs view
    openai.py    /v1/completions and /v1/chat/completions in the OpenAI format, with SSE streaming
    metrics.py   Prometheus counters and histograms for /metrics
    static/      the web page at `/` (plain HTML + JS)
"""
