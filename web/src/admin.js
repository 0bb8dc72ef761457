// Administrators see every user's jobs (the API widens the list and the event stream for
// them), with the owner on each.

import { html } from './html.js';
import { JobList } from './jobs.js';
import { Link, useTitle } from './router.js';

export function AdminPage({ me }) {
  useTitle('Admin');
  if (me?.role !== 'admin') {
    return html`<h1 tabindex="-1">Admin</h1>
      <p>This page is for administrators. <${Link} href="/">Back to your jobs</${Link}></p>`;
  }
  return html`<h1 tabindex="-1">Admin</h1>
    <${JobList} heading="Everyone's jobs" showOwner />`;
}
