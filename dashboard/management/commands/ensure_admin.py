"""Create the `admin` superuser on first start, without ever logging its password.

The generated password is printed once and kept in `<data dir>/admin-password`
(mode 0600) so that `make run` can tell the user where to find it later.
"""

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

ADMIN_USERNAME = "admin"
PASSWORD_ENV = "LOOMVIEW_ADMIN_PASSWORD"


def admin_password_path() -> Path:
    return Path(settings.LOOMVIEW_DATA_DIR) / "admin-password"


def admin_password_hint() -> str:
    """Where the admin password can be found, for banners; never the password."""
    path = admin_password_path()
    if path.exists():
        return f"password in {path}"
    return f"password set from {PASSWORD_ENV} (or changed with `manage.py changepassword admin`)"


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode does not apply to a file that already existed.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


class Command(BaseCommand):
    help = "Create the 'admin' superuser with a random password if it does not exist yet."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        path = admin_password_path()
        env_password = os.environ.get(PASSWORD_ENV, "")

        if User.objects.filter(username=ADMIN_USERNAME).exists():
            self.stdout.write(f"User '{ADMIN_USERNAME}' exists; {admin_password_hint()}.")
            if env_password:
                self.stdout.write(
                    f"{PASSWORD_ENV} is set but only applies when the user is created; "
                    "the existing password was not changed."
                )
            return

        with transaction.atomic():
            if env_password:
                User.objects.create_superuser(ADMIN_USERNAME, email="", password=env_password)
                # A file left from an earlier database would now point at a wrong password.
                path.unlink(missing_ok=True)
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Created superuser '{ADMIN_USERNAME}' "
                        f"with the password from {PASSWORD_ENV}."
                    )
                )
                return
            password = secrets.token_urlsafe(18)
            User.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
            _write_secret(path, password)

        rule = "=" * 64
        self.stdout.write(
            self.style.SUCCESS(
                f"{rule}\n"
                f"  Created superuser '{ADMIN_USERNAME}'\n"
                f"  password: {password}\n"
                f"  (shown once; also stored in {path}, mode 0600)\n"
                f"{rule}"
            )
        )
