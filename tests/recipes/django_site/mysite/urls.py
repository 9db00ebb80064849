from django.urls import path
from flags import views

urlpatterns = [
    path("", views.index),
    path("health", views.health),
]
