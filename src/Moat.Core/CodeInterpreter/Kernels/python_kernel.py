# Moat's Python kernel: one long-lived interpreter of a code context, driven by the host.
# Runs inside the sandbox as `python3 -u -c <this file>`. Requests arrive on stdin, one JSON object
# per line: {"code": "...", "env": {...}}. Every message to the host goes out on the original
# stdout, one JSON object per line. User code gets its own stdout and stderr (pipes read by two
# threads), so prints, tracebacks and the output of child processes all arrive framed and in order.
import ast
import base64
import codecs
import inspect
import io
import json
import linecache
import os
import signal
import sys
import threading
import traceback

PROTOCOL = os.fdopen(os.dup(1), "wb", buffering=0)
REQUESTS = os.fdopen(os.dup(0), "rb")
_send_lock = threading.Lock()


def send(message):
    data = (json.dumps(message, ensure_ascii=True, default=str) + "\n").encode("ascii")
    with _send_lock:
        PROTOCOL.write(data)


# A marker each output pump strips and acknowledges: once both saw it, everything the cell wrote
# before it has been sent, so "end_of_execution" never overtakes output.
SYNC = b"\x00\x1fmoat-sync-" + os.urandom(8).hex().encode() + b"\x00"


class OutputPump(threading.Thread):
    def __init__(self, name, target_fd):
        super().__init__(name="moat-" + name, daemon=True)
        self.kind = name
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, target_fd)
        os.close(write_fd)
        self.read_fd = read_fd
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.synced = threading.Semaphore(0)

    def emit(self, data):
        text = self.decoder.decode(data)
        if text:
            send({"type": self.kind, "text": text})

    def run(self):
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                self.emit(pending)
                return
            pending += chunk
            while True:
                at = pending.find(SYNC)
                if at >= 0:
                    self.emit(pending[:at])
                    pending = pending[at + len(SYNC):]
                    self.synced.release()
                    continue
                keep = 0
                for k in range(min(len(SYNC) - 1, len(pending)), 0, -1):
                    if SYNC.startswith(pending[-k:]):
                        keep = k
                        break
                self.emit(pending[: len(pending) - keep])
                pending = pending[len(pending) - keep:]
                break


# Nothing reads the host's requests but the kernel: user code gets /dev/null as stdin.
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
sys.stdin = open(os.devnull, "r")

PUMPS = [OutputPump("stdout", 1), OutputPump("stderr", 2)]
for pump in PUMPS:
    pump.start()
sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True)
sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True)


def sync_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    for fd in (1, 2):
        try:
            os.write(fd, SYNC)
        except OSError:
            pass
    for pump in PUMPS:
        pump.synced.acquire(timeout=5)


# ---- rich results ----

FORMATS = [
    ("_repr_html_", "html"),
    ("_repr_markdown_", "markdown"),
    ("_repr_svg_", "svg"),
    ("_repr_png_", "png"),
    ("_repr_jpeg_", "jpeg"),
    ("_repr_pdf_", "pdf"),
    ("_repr_latex_", "latex"),
    ("_repr_json_", "json"),
    ("_repr_javascript_", "javascript"),
]
MIME = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


def encode_value(key, value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, tuple) and value:
        value = value[0]
    if key == "json":
        return value
    return value if isinstance(value, str) else str(value)


def is_figure(value):
    module = type(value).__module__ or ""
    return module.startswith("matplotlib.figure") and hasattr(value, "savefig")


def figure_png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def formats_of(value):
    data = {}
    if is_figure(value):
        data["png"] = figure_png(value)
    elif not isinstance(value, type):
        bundle = getattr(value, "_repr_mimebundle_", None)
        if callable(bundle):
            try:
                produced = bundle()
                if isinstance(produced, tuple):
                    produced = produced[0]
                for mime, item in (produced or {}).items():
                    if mime in MIME:
                        data[MIME[mime]] = encode_value(MIME[mime], item)
            except Exception:
                pass
        for method, key in FORMATS:
            if key in data:
                continue
            render = getattr(value, method, None)
            if not callable(render):
                continue
            try:
                produced = render()
            except Exception:
                continue
            if produced is not None:
                data[key] = encode_value(key, produced)
    if "text" not in data:
        try:
            text = repr(value)
        except Exception as e:
            text = "<unrepresentable %s: %s>" % (type(value).__name__, e)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        data["text"] = text
    return data


def display(value, main):
    # What the cell printed so far goes out first.
    sync_output()
    message = {"type": "result", "is_main_result": main}
    message.update(formats_of(value))
    send(message)


def flush_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        numbers = list(pyplot.get_fignums())
    except Exception:
        return
    for number in numbers:
        try:
            figure = pyplot.figure(number)
            send({"type": "result", "is_main_result": False, "png": figure_png(figure), "text": repr(figure)})
        except Exception as e:
            send({"type": "stderr", "text": "could not render figure %s: %s\n" % (number, e)})
    try:
        pyplot.close("all")
    except Exception:
        pass


# matplotlib draws with Agg and shows figures as results, as a notebook's inline backend does.
class InlineBackendFinder:
    NAME = "moat_inline"

    def find_spec(self, name, path=None, target=None):
        if name != self.NAME:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase

        def show(*args, **kwargs):
            flush_figures()

        module.show = show


sys.meta_path.insert(0, InlineBackendFinder())
os.environ["MPLBACKEND"] = "module://" + InlineBackendFinder.NAME


# ---- execution ----

# User code runs in a fresh __main__ (so pickling its classes works); the kernel keeps its own globals.
import types

KERNEL_MODULE = sys.modules["__main__"]
USER_MODULE = types.ModuleType("__main__")
USER_MODULE.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = USER_MODULE
NAMESPACE = USER_MODULE.__dict__
FLAGS = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
_loop = None


def await_if_needed(value):
    global _loop
    if inspect.iscoroutine(value):
        import asyncio

        if _loop is None:
            _loop = asyncio.new_event_loop()
        return _loop.run_until_complete(value)
    return value


def user_traceback(error, filename_prefix):
    tb = error.__traceback__
    # Drop the kernel's own frames: the traceback starts in the cell.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(filename_prefix):
        tb = tb.tb_next
    if isinstance(error, SyntaxError) and tb is None:
        return "".join(traceback.format_exception_only(type(error), error))
    return "".join(traceback.format_exception(type(error), error, tb))


def run_cell(code, count):
    filename = "<cell %d>" % count
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    if tree.body:
        await_if_needed(eval(compile(tree, filename, "exec", flags=FLAGS), NAMESPACE))
    if last is not None:
        value = await_if_needed(eval(compile(last, filename, "eval", flags=FLAGS), NAMESPACE))
        if value is not None:
            NAMESPACE["_"] = value
            display(value, True)


def execute(request, count):
    code = request.get("code", "")
    env = request.get("env") or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({str(k): str(v) for k, v in env.items()})
    global _in_cell
    try:
        try:
            _in_cell = True
            run_cell(code, count)
        finally:
            _in_cell = False
            flush_figures()
    except BaseException as error:  # KeyboardInterrupt and SystemExit too: the kernel survives them
        sync_output()
        send({
            "type": "error",
            "name": type(error).__name__,
            "value": str(error),
            "traceback": user_traceback(error, "<cell"),
        })
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main():
    count = 0
    send({"type": "ready", "language": "python", "version": sys.version.split()[0]})
    while True:
        try:
            line = REQUESTS.readline()
            if not line:
                return
            request = json.loads(line)
            count += 1
            execute(request, count)
            sync_output()
            send({"type": "number_of_executions", "execution_count": count})
            send({"type": "end_of_execution"})
        except KeyboardInterrupt:
            continue


# An interrupt stops the running cell; one that arrives while the kernel itself works is ignored,
# so the host always gets the end of every execution.
_in_cell = False


def on_interrupt(signum, frame):
    if _in_cell:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_interrupt)
main()
