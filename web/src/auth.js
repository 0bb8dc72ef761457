// The sign-in and sign-up forms.

import { useRef, useState } from 'preact/hooks';
import { html } from './html.js';
import { Link, useTitle } from './router.js';
import { register, signIn } from './session.js';
import { Status } from './ui.js';

function Credentials({ id, onSubmit, submitLabel, newPassword }) {
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState('');
  const emailRef = useRef(null);
  const submit = async (e) => {
    e.preventDefault();
    if (busy) return;
    const data = new FormData(e.currentTarget);
    setBusy(true);
    setMessage('');
    try {
      await onSubmit(String(data.get('email')).trim(), String(data.get('password')));
    } catch (err) {
      setMessage(err.message);
      setBusy(false);
      emailRef.current?.focus();
    }
  };
  return html`<form class="panel form" id=${id} onSubmit=${submit} novalidate=${false}>
    <div class="field">
      <label for=${`${id}-email`}>Email</label>
      <input ref=${emailRef} id=${`${id}-email`} name="email" type="email" autocomplete="email" required />
    </div>
    <div class="field">
      <label for=${`${id}-password`}>Password</label>
      <input id=${`${id}-password`} name="password" type="password" required
        autocomplete=${newPassword ? 'new-password' : 'current-password'} />
    </div>
    <${Status} id=${`${id}-status`} message=${message} error />
    <button type="submit" class="primary" disabled=${busy}>${busy ? 'Please wait…' : submitLabel}</button>
  </form>`;
}

export function SignInPage({ notice, onSignedIn }) {
  useTitle('Sign in');
  return html`<h1 tabindex="-1">Sign in</h1>
    ${notice && html`<p class="notice" role="status">${notice}</p>`}
    <${Credentials} id="sign-in" submitLabel="Sign in"
      onSubmit=${async (email, password) => onSignedIn(await signIn(email, password))} />
    <p>New here? <${Link} href="/sign-up">Create an account</${Link}></p>`;
}

export function SignUpPage({ onSignedIn }) {
  useTitle('Sign up');
  return html`<h1 tabindex="-1">Create an account</h1>
    <${Credentials} id="sign-up" submitLabel="Create account" newPassword
      onSubmit=${async (email, password) => {
        await register(email, password);
        onSignedIn(await signIn(email, password));
      }} />
    <p>Already have an account? <${Link} href="/sign-in">Sign in</${Link}></p>`;
}
