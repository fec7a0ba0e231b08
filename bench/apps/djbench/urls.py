from django.http import HttpResponse
from django.urls import path

from .models import Item


def one_query(request):
    """The request's work: one ORM query (SELECT ... WHERE id = 1 LIMIT 1)."""
    item = Item.objects.filter(pk=1).first()
    return HttpResponse(b"1" if item is not None else b"0", content_type="text/plain")


urlpatterns = [path("", one_query)]
