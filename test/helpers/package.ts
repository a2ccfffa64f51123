/**
 * The package as users get it: `npm pack` (which runs the `prepack` build)
 * and an install of the tarball into a fresh consumer project in a temp
 * directory, with nothing of this repository on its module path.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The repository root (where package.json is). */
export const root = fileURLToPath(new URL('../../', import.meta.url));

/** Path of the TypeScript compiler of this repository (consumers compile with it). */
export const tscBin = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');

/** Runs a command; resolves with its output, rejects with stdout/stderr in the message. */
export async function sh(
  file: string,
  args: readonly string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeout?: number },
): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run(file, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      timeout: options.timeout ?? 180_000,
      maxBuffer: 16 << 20,
    });
  } catch (error) {
    const e = error as Error & { stdout?: string; stderr?: string };
    throw new Error(
      `${file} ${args.join(' ')} failed in ${options.cwd}: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`,
      { cause: error },
    );
  }
}

/** Packs the repository into `dir`; returns the tarball's path. */
export async function pack(dir: string): Promise<string> {
  const { stdout } = await sh('npm', ['pack', '--json', '--pack-destination', dir], { cwd: root, timeout: 300_000 });
  const [info] = JSON.parse(stdout.slice(stdout.indexOf('['))) as Array<{ filename: string }>;
  if (info === undefined) throw new Error(`npm pack printed no file: ${stdout}`);
  return path.join(dir, info.filename);
}

/** Lists a tarball's entries (paths inside `package/`). */
export async function tarballFiles(tarball: string): Promise<string[]> {
  const { stdout } = await sh('tar', ['-tzf', tarball], { cwd: path.dirname(tarball) });
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => line.replace(/^package\//, ''))
    .sort();
}

/** A temp directory, removed by `remove()`. */
export function tempDir(name: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), `memlock-${name}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Writes files (relative path -> content) under `dir`, creating folders. */
export function writeFiles(dir: string, files: Record<string, string>): void {
  for (const [file, content] of Object.entries(files)) {
    const full = path.join(dir, file);
    mkdirSync(path.dirname(full), { recursive: true });
    writeFileSync(full, content);
  }
}

/**
 * Installs `specs` (the tarball and typings) into `dir` as an npm project.
 * `--prefer-offline`: the dependencies are usually in the npm cache already.
 */
export async function install(dir: string, specs: readonly string[]): Promise<void> {
  await sh('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--no-package-lock', ...specs], {
    cwd: dir,
    timeout: 300_000,
  });
  if (!readdirSync(path.join(dir, 'node_modules')).includes('memlock')) throw new Error('memlock was not installed');
}

/** Version of a devDependency of this repository, as installed (so consumers type-check with the same @types/node). */
export async function installedVersion(name: string): Promise<string> {
  const { stdout } = await sh(process.execPath, ['-p', `require(${JSON.stringify(`${name}/package.json`)}).version`], {
    cwd: root,
  });
  return stdout.trim();
}
