"""Modal's control plane, stubbed at the wire: a grpclib server on a Unix socket that answers the installed
SDK's `modal_proto.api_pb2` requests, so that tests drive Modal's own client code (`FunctionCall.get`,
`Function.spawn`, `FunctionCall.cancel`, `Volume.reload` / `commit`) and see what it really raises.

What it models, and nothing more:

* Functions: `Function.from_name(app, tag)` (FunctionGet) and `.spawn()` (FunctionMap). Each spawned input
  runs `handler(*args)` as a task on a `Container`'s own event loop (a thread), as Modal's container
  runs an async method. Its output is a `GenericResult` the SDK decodes: success (the pickled return
  value), failure (the pickled exception), `TERMINATED` after `FunctionCall.cancel` (the task is
  cancelled with Modal's message, as SIGUSR1 does), `TIMEOUT` (`time_out`), or no output at all once
  `expire`d. `preempt` cancels the task the way SIGINT does (no message) and runs the input again, as
  Modal reschedules a preempted input. A `FunctionGetOutputs` poll waits for the output up to its
  `timeout` (1 s at most here: the SDK polls again), as Modal's server holds it.
* Generators: a handler that is an async generator is deployed as `FUNCTION_TYPE_GENERATOR`, so the SDK's
  `.remote_gen()` runs its own client code: `FunctionMap`, then the call's `data_out` stream
  (`FunctionCallGetDataOut`, one `DataChunk` per item, indices from 1) merged with `FunctionGetOutputs`,
  whose output is `GeneratorDone(items_total)` once the generator has ended. Items are sent inline, as a
  container sends those up to `MAX_OBJECT_SIZE_BYTES` (2 MiB pickled); a larger one, which a container
  would upload to blob storage, fails the call (blobs are not modelled).
* Volumes: `Volume.from_name(name)` (VolumeGetOrCreate), `reload()` and `commit()` (VolumeReload,
  VolumeCommit). Every container has its own view (a directory); `commit` publishes the files that
  container changed since its last reload, `reload` first commits (as Modal may) and then replaces
  the view with the committed state (each file replaced whole: a reader sees the old or the new bytes).
  `reload` fails with Modal's FAILED_PRECONDITION "open files"
  error while the calling container has any file of its view open (read from /proc/self/fd), and the
  SDK's `commit()` reloads afterwards, so it fails then too (after its changes were committed).
  `fail_next("VolumeCommit", ...)` makes the next call of an RPC fail with a gRPC status, `hold_next(...)`
  keeps the next one waiting until released (a slow commit).
* Lost inputs: `lose(call_id, status)` ends an input with one of the SDK's own `GenericStatus` values
  (terminated, internal failure, an eviction) and does not run it again.

Which container calls is told by its client's token id (`x-modal-token-id`): each `Container` has its
own `modal.Client`, and the default client (`Client.from_env()`, used by `FunctionCall.from_id`) is the
first container's.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import modal
from grpclib import GRPCError, Status
from modal._serialization import deserialize_data_format, serialize, serialize_data_format
from modal._utils.blob_utils import MAX_OBJECT_SIZE_BYTES
from modal.client import _Client
from modal_proto import api_pb2

OPEN_FILES_MESSAGE = "there are open files preventing the operation"
"""The server's words when a Volume operation meets open files (the SDK matches on them)."""
CANCELLED_MESSAGE = "Input was cancelled by user"
"""What Modal's container loop passes to `Task.cancel` on SIGUSR1 (`FunctionCall.cancel`)."""


class Container:
    """One Modal container: its own client, its own view of each Volume (`mount`), its own event loop."""

    def __init__(self, wire: ModalWire, name: str, mount: Path) -> None:
        self.wire, self.name, self.mount = wire, name, mount
        mount.mkdir(parents=True, exist_ok=True)
        self.baseline: dict[str, bytes] = {}
        """The view as of its last reload: what `commit` compares against."""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"modal-container-{name}", daemon=True)
        self.thread.start()
        self.client: modal.Client = modal.Client.from_credentials(name, "as-test")

    def volume(self, name: str) -> modal.Volume:
        """`modal.Volume.from_name(name)` as this container's code sees it (hydrated lazily, on first use)."""
        return modal.Volume.from_name(name, create_if_missing=True, client=self.client)

    def files(self) -> dict[str, bytes]:
        return {str(path.relative_to(self.mount)): path.read_bytes()
                for path in sorted(self.mount.rglob("*")) if path.is_file()}

    def open_files(self) -> list[str]:
        """The files of this view that this process has open now."""
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
            if target.is_relative_to(self.mount):
                found.append(str(target.relative_to(self.mount)))
        return found

    def run(self, coroutine: Awaitable[Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Call:
    """One spawned input and what Modal would answer for it."""

    id: str
    function: str
    args: tuple[Any, ...]
    container: Container
    result: api_pb2.GenericResult | None = None
    expired: bool = False
    runs: int = 0
    task: asyncio.Task[Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    preempting: bool = False
    items: list[bytes] = field(default_factory=list)
    """A generator's items so far, pickled (its `data_out` stream)."""
    data_format: int = api_pb2.DATA_FORMAT_PICKLE
    """The output's format: `DATA_FORMAT_GENERATOR_DONE` once a generator has ended."""


Handler = Callable[..., Awaitable[Any]]


class ModalWire:
    """The stub control plane (see the module docstring). Use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "modal.sock"
        self.functions: dict[tuple[str, str], tuple[Handler, Container]] = {}
        self.calls: dict[str, Call] = {}
        self.committed: dict[str, bytes] = {}
        self.containers: dict[str, Container] = {}
        self.rpcs: list[tuple[str, str]] = []
        """(container, RPC name) of every request, in order."""
        self.commits: list[tuple[str, dict[str, bytes | None]]] = []
        """(container, the files it changed: path -> new bytes, None if deleted) of every commit that changed any."""
        self._failures: dict[str, list[tuple[Status, str]]] = {}
        self._holds: dict[str, list[threading.Event]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------------------------------- set-up

    def __enter__(self) -> ModalWire:
        self.root.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="modal-wire", daemon=True)
        self._thread.start()
        async def serve() -> grpclib.server.Server:
            server = grpclib.server.Server([self])
            await server.start(path=str(self.socket))
            return server

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        env = {"MODAL_SERVER_URL": f"unix://{self.socket}", "MODAL_TOKEN_ID": "web", "MODAL_TOKEN_SECRET": "as-test"}
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        _Client._set_env_client(None)
        return self

    def __exit__(self, *exc: object) -> None:
        for call in self.calls.values():
            if call.task is not None and not call.task.done():
                call.container.loop.call_soon_threadsafe(call.task.cancel)
        for container in self.containers.values():
            container.client.close()
            container.close()
        _Client._set_env_client(None)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._server.close()
        asyncio.run_coroutine_threadsafe(self._server.wait_closed(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def container(self, name: str) -> Container:
        """A container named `name` (its client's token id), its view of the Volumes under root/name."""
        self.containers[name] = Container(self, name, self.root / name)
        return self.containers[name]

    def function(self, app_name: str, tag: str, handler: Handler, container: Container) -> None:
        """Deploy `handler` as `app_name`'s function `tag`; its inputs run on `container`."""
        self.functions[(app_name, tag)] = (handler, container)

    # ------------------------------------------------------------------------------------- test controls

    def fail_next(self, rpc: str, status: Status = Status.UNAVAILABLE, message: str = "stub failure",
                  times: int = 1) -> None:
        """The next `times` requests of `rpc` fail with `status`."""
        self._failures.setdefault(rpc, []).extend([(status, message)] * times)

    def clear_failures(self) -> None:
        """Answer every RPC again (the failures `fail_next` queued and not used yet are dropped)."""
        with self._lock:
            self._failures.clear()

    def wait(self, call_id: str, timeout: float = 120) -> Call:
        """The call, once its input has finished running (its output set)."""
        call = self.calls[call_id]
        if not call.done.wait(timeout):
            raise AssertionError(f"call {call_id} did not finish")
        return call

    def expire(self, call_id: str) -> None:
        """The call's output is gone (Modal keeps outputs for a limited time)."""
        call = self.calls[call_id]
        call.expired, call.result = True, None

    def time_out(self, call_id: str) -> None:
        """The input ran past its function's timeout: its task is stopped and the output is TIMEOUT."""
        call = self.calls[call_id]
        call.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT,
                                            exception="Function timed out")
        if call.task is not None:
            call.container.loop.call_soon_threadsafe(call.task.cancel)
        call.done.set()

    def lose(self, call_id: str, status: int = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
             message: str = "container lost") -> None:
        """The input ends without a result and is not run again, with one of the SDK's own `GenericStatus`
        values: `GENERIC_STATUS_TERMINATED` (its container was stopped: a preemption Modal did not reschedule,
        a host lost), `GENERIC_STATUS_INTERNAL_FAILURE` (Modal's own failure), or an eviction
        (`GENERIC_STATUS_KERNEL_OOM_KILL`, ...). Its task is stopped without a message."""
        call = self.calls[call_id]
        call.result = api_pb2.GenericResult(status=status, exception=message)  # type: ignore[arg-type]
        if call.task is not None:
            call.container.loop.call_soon_threadsafe(call.task.cancel)
        call.done.set()

    def hold_next(self, rpc: str) -> threading.Event:
        """The next request of `rpc` waits, unanswered, until the returned event is set (a slow commit)."""
        release = threading.Event()
        self._holds.setdefault(rpc, []).append(release)
        return release

    def preempt(self, call_id: str) -> None:
        """The container running the input is preempted: its task is cancelled the way Modal's SIGINT
        handler does (no message), then Modal runs the same input again (on the same `Container` here)."""
        call = self.calls[call_id]
        assert call.task is not None
        call.preempting = True
        call.container.loop.call_soon_threadsafe(call.task.cancel)

    # ----------------------------------------------------------------------------------------- running

    def _start(self, call: Call) -> None:
        handler, _ = self.functions[_split(call.function)]
        call.runs += 1

        async def generate() -> api_pb2.GeneratorDone:
            call.items.clear()
            async for item in handler(*call.args):
                data = serialize(item)
                if len(data) > MAX_OBJECT_SIZE_BYTES:
                    raise RuntimeError(f"a generator item of {len(data)} B: Modal would put it in blob storage, "
                                       f"which the stub does not model (inline up to {MAX_OBJECT_SIZE_BYTES} B)")
                call.items.append(data)
            return api_pb2.GeneratorDone(items_total=len(call.items))

        async def run() -> None:
            call.task = asyncio.current_task()
            try:
                if inspect.isasyncgenfunction(handler):
                    done = await generate()
                    call.result = api_pb2.GenericResult(
                        status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                        data=serialize_data_format(done, api_pb2.DATA_FORMAT_GENERATOR_DONE))
                    call.data_format = api_pb2.DATA_FORMAT_GENERATOR_DONE
                    call.done.set()
                    return
                value = await handler(*call.args)
            except asyncio.CancelledError:
                if call.preempting:  # rescheduled: the same input runs again
                    call.preempting = False
                    call.container.loop.call_soon(self._start, call)
                    return
                if call.result is None:
                    call.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
                                                        exception=CANCELLED_MESSAGE)
            except Exception as error:
                call.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                                                    exception=repr(error), data=serialize(error))
            else:
                if call.result is None:
                    call.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                                                        data=serialize(value))
            call.done.set()

        call.container.loop.call_soon_threadsafe(lambda: call.container.loop.create_task(run()))

    # --------------------------------------------------------------------------------------- the RPCs

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        handlers = {
            "FunctionGet": (api_pb2.FunctionGetRequest, api_pb2.FunctionGetResponse),
            "FunctionMap": (api_pb2.FunctionMapRequest, api_pb2.FunctionMapResponse),
            "FunctionGetOutputs": (api_pb2.FunctionGetOutputsRequest, api_pb2.FunctionGetOutputsResponse),
            "FunctionCallCancel": (api_pb2.FunctionCallCancelRequest, _empty()),
            "VolumeGetOrCreate": (api_pb2.VolumeGetOrCreateRequest, api_pb2.VolumeGetOrCreateResponse),
            "VolumeReload": (api_pb2.VolumeReloadRequest, _empty()),
            "VolumeCommit": (api_pb2.VolumeCommitRequest, api_pb2.VolumeCommitResponse),
        }
        return {
            **{f"/modal.client.ModalClient/{name}": grpclib.const.Handler(
                self._serve(name), grpclib.const.Cardinality.UNARY_UNARY, request, response)
               for name, (request, response) in handlers.items()},
            "/modal.client.ModalClient/FunctionCallGetDataOut": grpclib.const.Handler(
                self._data_out, grpclib.const.Cardinality.UNARY_STREAM, api_pb2.FunctionCallGetDataRequest,
                api_pb2.DataChunk),
        }

    async def _data_out(self, stream: Any) -> None:
        """A generator call's `data_out` stream: its items after `last_index`, as they come; held open once
        the call has ended (the SDK closes it when it has every item) for a while, then ended."""
        request = await stream.recv_message()
        caller = dict(stream.metadata).get("x-modal-token-id", "?")
        with self._lock:
            self.rpcs.append((caller, "FunctionCallGetDataOut"))
        call = self.calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"No function call {request.function_call_id}")
        sent, idle_since = request.last_index, None
        while True:
            items = call.items[sent:]
            for data in items:
                sent += 1
                await stream.send_message(api_pb2.DataChunk(data_format=api_pb2.DATA_FORMAT_PICKLE, index=sent,
                                                            data=data))
            if call.done.is_set() and not items:
                idle_since = idle_since or asyncio.get_running_loop().time()
                if asyncio.get_running_loop().time() - idle_since > 10:
                    return
            await asyncio.sleep(0.01)

    def _serve(self, name: str) -> Callable[[Any], Awaitable[None]]:
        answer = getattr(self, f"_{name}")

        async def serve(stream: Any) -> None:
            request = await stream.recv_message()
            caller = dict(stream.metadata).get("x-modal-token-id", "?")
            with self._lock:
                self.rpcs.append((caller, name))
                failure = self._failures.get(name, []).pop(0) if self._failures.get(name) else None
                hold = self._holds.get(name, []).pop(0) if self._holds.get(name) else None
            if hold is not None:
                await asyncio.to_thread(hold.wait, 60)
            if failure is not None:
                raise GRPCError(*failure)
            message = answer(request, self.containers.get(caller))
            if inspect.isawaitable(message):
                message = await message
            await stream.send_message(message)

        return serve

    def _FunctionGet(self, request: api_pb2.FunctionGetRequest, _caller: Container | None) -> Any:
        if (request.app_name, request.object_tag) not in self.functions:
            raise GRPCError(Status.NOT_FOUND, f"No function {request.object_tag!r} in app {request.app_name!r}")
        tag = f"{request.app_name}/{request.object_tag}"
        handler, _ = self.functions[(request.app_name, request.object_tag)]
        kind = (api_pb2.Function.FUNCTION_TYPE_GENERATOR if inspect.isasyncgenfunction(handler)
                else api_pb2.Function.FUNCTION_TYPE_FUNCTION)
        function = api_pb2.Function(function_name=request.object_tag)
        ranked = api_pb2.FunctionData.RankedFunction(rank=0, function=function)
        return api_pb2.FunctionGetResponse(
            function_id=f"fu-{tag}",
            handle_metadata=api_pb2.FunctionHandleMetadata(
                function_name=request.object_tag, function_type=kind,
                supported_input_formats=[api_pb2.DATA_FORMAT_PICKLE], app_id="ap-stub"),
            function=api_pb2.FunctionData(function_name=request.object_tag, ranked_functions=[ranked]))

    def _FunctionMap(self, request: api_pb2.FunctionMapRequest, _caller: Container | None) -> Any:
        item = request.pipelined_inputs[0].input
        args, kwargs = deserialize_data_format(item.args, item.data_format, None)
        assert not kwargs, "our functions are called with positional arguments"
        call_id = f"fc-{next(self._ids)}"
        function = request.function_id.removeprefix("fu-")
        call = Call(id=call_id, function=function, args=tuple(args), container=self.functions[_split(function)][1])
        self.calls[call_id] = call
        self._start(call)
        return api_pb2.FunctionMapResponse(
            function_call_id=call_id,
            pipelined_inputs=[api_pb2.FunctionPutInputsResponseItem(idx=0, input_id=f"in-{call_id}", input_jwt="jwt")])

    async def _FunctionGetOutputs(self, request: api_pb2.FunctionGetOutputsRequest, _caller: Container | None) -> Any:
        call = self.calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"No function call {request.function_call_id}")
        if call.expired:
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0)
        if call.result is None and request.timeout > 0:  # Modal's server holds the poll until then
            await asyncio.to_thread(call.done.wait, min(request.timeout, 1.0))
        if call.expired:
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0)
        if call.result is None:
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=1)
        return api_pb2.FunctionGetOutputsResponse(
            outputs=[api_pb2.FunctionGetOutputsItem(result=call.result, idx=0, data_format=call.data_format)],
            num_unfinished_inputs=0)

    def _FunctionCallCancel(self, request: api_pb2.FunctionCallCancelRequest, _caller: Container | None) -> Any:
        call = self.calls[request.function_call_id]
        if call.result is None:
            if call.task is not None and not call.task.done():
                call.container.loop.call_soon_threadsafe(call.task.cancel, CANCELLED_MESSAGE)
            else:  # not started yet: it never will
                call.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
                                                    exception=CANCELLED_MESSAGE)
                call.done.set()
        return _empty()()

    def _VolumeGetOrCreate(self, request: api_pb2.VolumeGetOrCreateRequest, _caller: Container | None) -> Any:
        return api_pb2.VolumeGetOrCreateResponse(
            volume_id=f"vo-{request.deployment_name}",
            metadata=api_pb2.VolumeMetadata(name=request.deployment_name,
                                            version=api_pb2.VolumeFsVersion.VOLUME_FS_VERSION_V2))

    def _VolumeCommit(self, _request: api_pb2.VolumeCommitRequest, caller: Container | None) -> Any:
        assert caller is not None, "only containers commit"
        self._commit(caller)
        return api_pb2.VolumeCommitResponse(skip_reload=False)

    def _VolumeReload(self, _request: api_pb2.VolumeReloadRequest, caller: Container | None) -> Any:
        assert caller is not None, "only containers reload"
        open_files = caller.open_files()
        if open_files:
            raise GRPCError(Status.FAILED_PRECONDITION, OPEN_FILES_MESSAGE)
        self._commit(caller)
        for relative in set(caller.files()) - set(self.committed):
            (caller.mount / relative).unlink()
        for relative, data in self.committed.items():
            path = caller.mount / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_bytes() != data:  # replaced whole: a reader sees old or new
                staged = path.with_name(f".reload-{path.name}")
                staged.write_bytes(data)
                os.replace(staged, path)
        for directory in sorted(caller.mount.rglob("*"), reverse=True):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        caller.baseline = dict(self.committed)
        return _empty()()

    def _commit(self, container: Container) -> None:
        """Publish what `container` changed in its view since its last reload."""
        now = container.files()
        changed: dict[str, bytes | None] = {path: data for path, data in now.items()
                                            if container.baseline.get(path) != data}
        changed.update(dict.fromkeys(set(container.baseline) - set(now)))
        with self._lock:
            for relative, data in changed.items():
                if data is None:
                    self.committed.pop(relative, None)
                else:
                    self.committed[relative] = data
            if changed:
                self.commits.append((container.name, changed))
        container.baseline = now

    def committed_files(self, prefix: str = "") -> Iterator[str]:
        return (name for name in sorted(self.committed) if name.startswith(prefix))


def _split(function: str) -> tuple[str, str]:
    app_name, tag = function.split("/", 1)
    return app_name, tag


def _empty() -> Any:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty
