"""The Viewers and Operators groups; operators hold dashboard.operate_runs."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def create_roles(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    # Permissions are otherwise created after all migrations (post_migrate),
    # too late for this one to grant it.
    content_type, _ = ContentType.objects.get_or_create(app_label="dashboard", model="auditentry")
    operate, _ = Permission.objects.get_or_create(
        content_type=content_type,
        codename="operate_runs",
        defaults={"name": "Can act on runs: signal, query, update, reset, stop, start"},
    )
    Group.objects.get_or_create(name="Viewers")
    operators, _ = Group.objects.get_or_create(name="Operators")
    operators.permissions.add(operate)


def remove_roles(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=["Viewers", "Operators"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0002_auditentry"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
