from django.urls import path

from . import views

urlpatterns = [path(f"{name}/", getattr(views, name)) for name in views.ROUTES] + [
    path("sleep/<str:seconds>/", views.sleep),
]
urlpatterns += [path("create-fail/", views.create_fail), path("atomic-fail/", views.atomic_fail)]
