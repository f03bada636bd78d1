"""Run by `.venv-kserve`'s interpreter: the kserve SDK's REST and gRPC clients against a gateway.

argv: HTTP address, gRPC address, model, input name, JSON rows. Prints one JSON object: what each
client saw (readiness and the first output's values), for the test to compare with tritonclient's.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, name: str, rows: np.ndarray) -> InferRequest:
    tensor = InferInput(name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="kserve-sdk")


async def rest(address: str, model: str, name: str, rows: np.ndarray) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=60))
    base = f"http://{address}"
    try:
        answer = await client.infer(base, request(model, name, rows), model_name=model)
        return {"live": await client.is_server_live(base),
                "ready": await client.is_server_ready(base),
                "model_ready": await client.is_model_ready(base, model),
                "missing_ready": await client.is_model_ready(base, "no-such-model"),
                "id": answer.id, "outputs": {o.name: o.as_numpy().tolist()
                                             for o in answer.outputs}}
    finally:
        await client.close()


async def grpc_(address: str, model: str, name: str, rows: np.ndarray) -> dict:
    client = InferenceGRPCClient(address, timeout=60)
    try:
        answer = await client.infer(request(model, name, rows))
        return {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
                "model_ready": await client.is_model_ready(model),
                "id": answer.id, "outputs": {o.name: o.as_numpy().tolist()
                                             for o in answer.outputs}}
    finally:
        await client.close()


async def main() -> None:
    http_address, grpc_address, model, name, rows_json = sys.argv[1:6]
    rows = np.asarray(json.loads(rows_json), dtype=np.float32)
    print(json.dumps({"rest": await rest(http_address, model, name, rows),
                      "grpc": await grpc_(grpc_address, model, name, rows)}))


if __name__ == "__main__":
    asyncio.run(main())
