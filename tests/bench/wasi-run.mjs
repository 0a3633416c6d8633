// Runs a wasm32-wasip1 command module under Node's WASI (V8, the engine Envoy
// embeds): node tests/bench/wasi-run.mjs MODULE.wasm FILE. FILE is made
// readable as /data/<name> and passed as the first argument. proxy-wasm host
// imports ("env") are stubbed to throw: the benchmarks call only pure code.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { dirname, basename } from 'node:path';
const [wasmPath, file] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['bench', '/data/' + basename(file)], preopens: { '/data': dirname(file) } });
const mod = await WebAssembly.compile(await readFile(wasmPath));
const imports = wasi.getImportObject();
const env = {};
for (const imp of WebAssembly.Module.imports(mod)) if (imp.module === 'env') env[imp.name] = () => { throw new Error('host call ' + imp.name); };
imports.env = env;
const inst = await WebAssembly.instantiate(mod, imports);
wasi.start(inst);
