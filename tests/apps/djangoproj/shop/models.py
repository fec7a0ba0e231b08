import os

from django.db import models


class Item(models.Model):
    v = models.IntegerField(default=0)

    class Meta:
        app_label = "shop"
        db_table = os.environ.get("GP_DJ_TABLE", "gp_dj_item")
