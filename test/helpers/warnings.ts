/**
 * Process warnings of one kind, collected instead of printed. A test that
 * sets a warning off on purpose (the positive control of a "no warning"
 * check) must not leave it in the output, where it reads as a real problem:
 * CI showed the control's "11 abort listeners added to [AbortSignal]" as a
 * MaxListenersExceededWarning of the suite. Other warnings still reach the
 * listeners that were there (Node's printer).
 */
export function captureWarnings(t: { teardown: (fn: () => void) => void }, name: string): string[] {
  const warnings: string[] = [];
  const others = process.listeners('warning');
  for (const listener of others) process.off('warning', listener);
  const collect = (warning: Error): void => {
    if (warning.name === name) warnings.push(warning.message);
    else for (const listener of others) listener(warning);
  };
  process.on('warning', collect);
  t.teardown(() => {
    process.off('warning', collect);
    for (const listener of others) process.on('warning', listener);
  });
  return warnings;
}
