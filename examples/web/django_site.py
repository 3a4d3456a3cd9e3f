"""A whole Django project in one file: its settings and its URLs (the views: django_views.py)."""

from django.urls import path
from django_views import add_item, paid

ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_site"  # this module: urlpatterns below
# No apps, middleware or database of Django's own: the views read and write durajobs only.

urlpatterns = [
    path("orders/<order_id>/items", add_item),
    path("orders/<order_id>/paid", paid),
]
