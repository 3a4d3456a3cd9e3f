# django_views.py -- the Jobs lives in shop.py (imported once per process, shared by threads)
import json

from django.http import JsonResponse
from django.views.decorators.http import require_POST
from shop import ItemAdded, Paid, jobs


@require_POST
def add_item(request, order_id: str):
    sku = json.loads(request.body)["sku"]
    result = jobs.task("orders").send(order_id, ItemAdded(sku))
    return JsonResponse({"order": result.instance_id})


@require_POST
def paid(request, order_id: str):
    jobs.task("orders").send(order_id, Paid(json.loads(request.body)["amount"]))
    return JsonResponse({"status": jobs.task("orders").status(order_id).status})
