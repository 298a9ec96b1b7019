"""Drives `moat sandbox shell ID` on a real pseudo-terminal, as a user at a terminal would: the
local terminal's size reaches the sandbox, a window resize (SIGWINCH) follows, Ctrl+C goes to the
sandbox instead of killing the CLI (raw mode), and the CLI exits with the remote shell's code.
Usage: shell_on_a_tty.py DOTNET_CLI_DLL SANDBOX_ID (MOAT_URL and MOAT_API_KEY in the environment).
Prints the transcript; exits 0 when every step was seen, 1 otherwise."""
import fcntl, os, pty, select, struct, sys, termios, time

cli, sandbox = sys.argv[1], sys.argv[2]
transcript = b""


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


pid, master = pty.fork()
if pid == 0:
    set_size(0, 30, 100)
    os.execvp("dotnet", ["dotnet", cli, "sandbox", "shell", sandbox])


def read_until(text, seconds=30):
    global transcript
    deadline = time.time() + seconds
    while text.encode() not in transcript:
        left = deadline - time.time()
        if left <= 0:
            fail(f"did not see {text!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                fail(f"the CLI ended before {text!r}")
            if not chunk:
                fail(f"the CLI ended before {text!r}")
            transcript += chunk


def fail(why):
    sys.stdout.write(transcript.decode("utf-8", "replace"))
    print(f"\nFAIL: {why}")
    sys.exit(1)


def type_(text):
    os.write(master, text.encode())


type_("stty size; echo ready-$((1+1))\r")
read_until("ready-2")
read_until("30 100")
set_size(master, 50, 150)  # the kernel sends SIGWINCH to the CLI
time.sleep(1)
type_("stty size\r")
read_until("50 150")
type_("sleep 30; echo not-interrupted\r")
time.sleep(1)
type_("\x03")  # Ctrl+C: in raw mode a byte for the sandbox's terminal, not a signal for the CLI
type_("echo after=$?\r")
read_until("after=130")
type_("exit 4\r")
_, status = os.waitpid(pid, 0)
try:
    while True:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        transcript += chunk
except OSError:
    pass
if b"\nnot-interrupted" in transcript:
    fail("Ctrl+C did not interrupt the remote sleep")
code = os.waitstatus_to_exitcode(status)
if code != 4:
    fail(f"the CLI exited {code}, not the remote shell's 4")
sys.stdout.write(transcript.decode("utf-8", "replace"))
print("\nOK")
