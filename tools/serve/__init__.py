"""`bitnet serve`: one loopback HTTP server in front of our patched llama-server.

llama-server does the serving (OpenAI routes, slots, continuous batching); this package adds what
it lacks, in Python and without inference math: Ollama-compatible routes, model names, several
models with at most `max_loaded` llama-server processes alive (least recently used stops first),
an API key on every route but /health, and a small chat page at `/`.

- `catalog`: the models given on the command line, their names and what their GGUF says
- `backends`: one llama-server child per loaded model, started and stopped by an LRU pool
- `ollama`: request checking and the translation of Ollama requests and replies
- `app`: the HTTP server that routes, checks the key and relays streams
"""
