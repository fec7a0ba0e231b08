import os

from django.db import models


class Item(models.Model):
    v = models.IntegerField(default=0)

    class Meta:
        app_label = "djbench"
        db_table = os.environ.get("GPB_DJ_TABLE", "gpb_dj_item")
