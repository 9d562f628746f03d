"""The web page: drop a photo, watch it become a 3D scene you can orbit (see `app.web.page`)."""

from app.web.page import (
    PAGE_PATH,
    STATIC_DIR,
    VENDOR_DIR,
    mount_page,
    page_response,
    vendor_files,
    vendor_missing,
    wants_html,
)

__all__ = [
    "PAGE_PATH", "STATIC_DIR", "VENDOR_DIR", "mount_page", "page_response", "vendor_files", "vendor_missing",
    "wants_html",
]
