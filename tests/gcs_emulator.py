"""`python -m gcp_storage_emulator`, honouring generation preconditions as the real service does.

The emulator ignores `ifGenerationMatch` (and `ifGenerationNotMatch`): an upload with
`if_generation_match=0` ("only if no such object") or a delete pinned to a generation would
succeed where Cloud Storage answers 412 Precondition Failed. Code that relies on them (the run-dir
lock) could then not be tested for real, so this launcher checks them before the emulator's own
upload and delete handlers run, one request at a time (check and write together, as the service
does atomically). Same command line as the emulator's.
"""
import functools
import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator_main
from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_lock = threading.Lock()


def _failed(request, storage, bucket: str, name: str | None) -> bool:
    """True if the request's generation precondition does not hold for the object now."""
    wanted = request.query.get("ifGenerationMatch")
    unwanted = request.query.get("ifGenerationNotMatch")
    if not (wanted or unwanted) or not name:
        return False
    try:
        current = str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        current = "0"  # generation 0: "no live object"
    return bool(wanted and wanted[0] != current or unwanted and unwanted[0] == current)


def _with_precondition(handler, object_name):
    @functools.wraps(handler)
    def checked(request, response, storage, *args, **kwargs):
        with _lock:
            bucket = request.params.get("bucket_name")
            if _failed(request, storage, bucket, object_name(request)):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions "
                                         "you specified did not hold.", "errors": [
                                             {"reason": "conditionNotMet", "message": "Precondition Failed"}]}})
                return None
            return handler(request, response, storage, *args, **kwargs)
    return checked


def _upload_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def install() -> None:
    """Wraps the emulator's insert and delete handlers (module attributes and route table)."""
    wrapped = {objects.insert: _with_precondition(objects.insert, _upload_name),
               objects.delete: _with_precondition(objects.delete, lambda r: r.params.get("object_id"))}
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in wrapped:
                handlers[method] = wrapped[handler]
    objects.insert, objects.delete = wrapped[objects.insert], wrapped[objects.delete]


if __name__ == "__main__":
    install()
    emulator_main.main(sys.argv[1:])
