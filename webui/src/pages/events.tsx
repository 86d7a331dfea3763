// The live list: the daemon's driver events and console tasks' starts and ends, newest first.
import { liveEvents, streamState } from '../events.js';
import { time } from '../format.js';
import { useStore } from '../store.js';

export function EventsPage() {
  const list = useStore(liveEvents);
  const stream = useStore(streamState);
  return (
    <div>
      <h1>Events</h1>
      <p class="muted">
        Live from the daemon since this page was loaded ({stream === 'open' ? 'connected' : stream}); newest first.
      </p>
      <table class="grid" id="events">
        <thead>
          <tr>
            <th>Time</th>
            <th>Source</th>
            <th>Event</th>
            <th>Domain</th>
            <th>Detail</th>
          </tr>
        </thead>
        <tbody>
          {list.map((e) => (
            <tr key={e.seq} class={`ev ev-${e.channel}`} data-type={e.type}>
              <td class="time">{time(e.time)}</td>
              <td>{e.channel === 'domain' ? 'driver' : 'task'}</td>
              <td class="type nowrap">{e.type}</td>
              <td>{e.domain}</td>
              <td class="detail">{e.detail}</td>
            </tr>
          ))}
          {list.length === 0 && (
            <tr>
              <td colSpan={5} class="muted">
                No events yet.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </div>
  );
}
