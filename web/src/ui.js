// Small shared pieces: a live status line and a confirmation dialog.

import { useEffect, useRef } from 'preact/hooks';
import { html } from './html.js';

/**
 * A polite live region. It is always rendered (empty when quiet) because screen readers only
 * announce changes to a region that already exists.
 */
export function Status({ message, error = false, id }) {
  return html`<p id=${id} class=${`status${error && message ? ' status-error' : ''}`} role="status" aria-live="polite">
    ${message || ''}
  </p>`;
}

/** A modal <dialog> asking to confirm; focus starts on the safe choice. */
export function ConfirmDialog({ open, title, text, confirmLabel, onConfirm, onCancel }) {
  const ref = useRef(null);
  const cancelRef = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      dialog.showModal();
      cancelRef.current?.focus();
    } else if (!open && dialog.open) {
      dialog.close();
    }
  }, [open]);
  // Escape closes a modal dialog by itself; tell the owner.
  const onClose = () => open && onCancel();
  return html`<dialog ref=${ref} class="confirm" aria-labelledby="confirm-title" onClose=${onClose}>
    <h2 id="confirm-title">${title}</h2>
    <p>${text}</p>
    <div class="actions">
      <button type="button" class="danger" onClick=${onConfirm}>${confirmLabel}</button>
      <button type="button" ref=${cancelRef} onClick=${onCancel}>Keep it</button>
    </div>
  </dialog>`;
}
