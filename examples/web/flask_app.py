from flask import Flask, request
from shop import ItemAdded, Paid, jobs

app = Flask(__name__)


@app.post("/orders/<order_id>/items")
def add_item(order_id: str):
    result = jobs.task("orders").send(order_id, ItemAdded(request.json["sku"]))
    return {"order": result.instance_id, "remind_at": str(result.scheduled_at)}


@app.post("/orders/<order_id>/paid")
def paid(order_id: str):
    jobs.task("orders").send(order_id, Paid(request.json["amount"]))
    return {"status": jobs.task("orders").status(order_id).status}
