"""The tsslurm client library: `Client` (blocking) and `AsyncClient` (asyncio, many concurrent
requests on one socket). Both find a deployment through its state directory's connection file, a
credentials file handed to another user, or an explicit Endpoint.

`Endpoint` and `find_endpoint` (re-exported from tsslurm.statedir) say where a deployment is.
Requests travel as token ids when the deployment's tokenizer is at hand (text otherwise: the
broker tokenizes). Answers are detokenized when it is. A request that hears nothing for a while
pings the broker; if the broker does not answer, the client reconnects (a new socket, the
connection file read again) and re-submits with the same request id and the number of tokens it
already holds, so the answer continues where it stopped, without duplicates. Failures raise
ClientError subclasses with a message, never a bare traceback."""

from tsslurm.client.aio import AsyncClient
from tsslurm.client.base import (
    BrokerUnavailable,
    ClientError,
    GenerateResult,
    RequestError,
    RequestTimeout,
    StreamChunk,
)
from tsslurm.client.sync import Client
from tsslurm.statedir import Endpoint, find_endpoint

__all__ = ["AsyncClient", "BrokerUnavailable", "Client", "ClientError", "Endpoint",
           "GenerateResult", "RequestError", "RequestTimeout", "StreamChunk", "find_endpoint"]
