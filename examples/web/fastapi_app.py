from typing import Annotated

from fastapi import Body, FastAPI
from shop import ItemAdded, Paid, jobs

from durajobs.aio import AsyncJobs

app = FastAPI()
ajobs = AsyncJobs(jobs)  # async endpoints: each call runs in the loop's thread pool


@app.post("/orders/{order_id}/items")
async def add_item(order_id: str, sku: Annotated[str, Body(embed=True)]):
    result = await ajobs.task("orders").send(order_id, ItemAdded(sku))
    return {"order": result.instance_id}


@app.post("/orders/{order_id}/paid")
def paid(order_id: str, amount: Annotated[float, Body(embed=True)]):  # sync: FastAPI's pool
    jobs.task("orders").send(order_id, Paid(amount))
    return {"status": jobs.task("orders").status(order_id).status}
