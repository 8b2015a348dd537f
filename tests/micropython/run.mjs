// Runs Python code under MicroPython 1.27 (the WebAssembly port, npm package
// @micropython/micropython-webassembly-pyscript) for tests/micropython_runner.py.
//
// Usage: node run.mjs SPEC.json. The spec: {"module": path of micropython.mjs, "files": {path: base64},
// "code": Python source, "uart_fd": optional file descriptor}. Its stdout is the program's output,
// line by line as printed. A Python exception is not an exit code of the package's own CLI (it exits 0),
// so here it is: the traceback goes to stderr and the exit status is 1.
//
// With uart_fd, the program can reach a serial line (the master side of a pseudo-terminal the test
// opened and passed down): js.uart_write(hex) writes bytes, js.uart_read(n) returns up to n bytes as
// hex ("" when nothing is waiting: the fd is non-blocking).
import { readFileSync, writeSync, readSync } from "fs";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { loadMicroPython } = await import(spec.module);

if (spec.uart_fd !== undefined && spec.uart_fd !== null) {
  const fd = spec.uart_fd;
  globalThis.uart_write = (hex) => {
    const buf = Buffer.from(hex, "hex");
    let off = 0;
    while (off < buf.length) {
      try {
        off += writeSync(fd, buf, off, buf.length - off);
      } catch (e) {
        if (e.code !== "EAGAIN") throw e;
      }
    }
    return buf.length;
  };
  globalThis.uart_read = (n) => {
    const buf = Buffer.alloc(n);
    try {
      const got = readSync(fd, buf, 0, n, null);
      return buf.subarray(0, got).toString("hex");
    } catch (e) {
      if (e.code === "EAGAIN") return "";
      throw e;
    }
  };
}

const mp = await loadMicroPython({
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
  linebuffer: true,
});
for (const [path, content] of Object.entries(spec.files || {})) {
  const dir = path.substring(0, path.lastIndexOf("/"));
  if (dir) {
    try { mp.FS.mkdirTree(dir); } catch (e) { /* exists */ }
  }
  mp.FS.writeFile(path, Buffer.from(content, "base64"));
}
try {
  mp.runPython(spec.code);
} catch (e) {
  process.stderr.write("MicroPython exception: " + e.message + "\n");
  process.exitCode = 1;
}
