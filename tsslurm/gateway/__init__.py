"""The OpenAI-compatible HTTP gateway: `/v1/completions`, `/v1/chat/completions` (streamed or
whole), `/v1/models`, `/health`, `/metrics`, in front of a deployment's broker. The gateway is a
client of the broker (tsslurm.client.AsyncClient); it tokenizes prompts, applies the model's chat
template and detokenizes answers itself. Needs the `gateway` extra (FastAPI, uvicorn, jinja2).

Modules: serve (run one: `serve_gateway`, `spawn_gateway`), app (routes), serving (generation
endpoints), generate (a Job through the client), service (what a gateway holds), requests and
responses (the OpenAI formats), errors, codec and detokenize (text), chat (templates), stops,
keys (API keys), health, metrics, asgi (disconnect-aware responses). docs/gateway.md has the
user's view."""
