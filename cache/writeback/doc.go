// Package writeback decides when each upload of a keelfs cache runs.
//
// It holds one job per inode whose changes are not yet in S3, and one per
// object waiting to be deleted (a tombstone). A job is always in exactly
// one State. Jobs that wait for a time (the write-back delay, a backoff)
// sit in a heap ordered by due time, woken by one timer of an injected
// clock: nothing polls. A Runner, supplied by the cache, does the work of
// one attempt and says how it went in a Result; the Scheduler alone moves
// the job to its next state. The package knows nothing of S3, badger or
// inodes beyond their numbers.
//
// # States
//
//	Pending        waits for its due time: the write-back delay after the
//	               last change (capped by MaxDirtyAge), or at once when urged.
//	               A job whose id has not finished an upload within
//	               the last Delay also goes once no job has changed for
//	               QuickDelay
//	Uploading      an attempt runs
//	BackingOff     the last attempt failed with a retryable error; due again
//	               after an exponential backoff with jitter, capped
//	WaitingForKey  another job must release an object key first (Release),
//	               or KeyWait passes and it looks again
//	Conflicted     lost a race with another writer: due at once, to save the
//	               local version beside the other writer's
//	Failed         a permanent error: the job is kept and reported, and not
//	               attempted again until it changes, Retry or Flush asks, or
//	               the cache is opened again
//
// Transitions, by the Runner's Outcome:
//
//	Done       Uploading -> (gone), or Pending if it changed meanwhile
//	Again      Uploading -> Pending, due after Result.After
//	Retry      Uploading -> BackingOff
//	Permanent  Uploading -> Failed
//	WaitKey    Uploading -> WaitingForKey (Failed if the holder has failed)
//	Conflict   Uploading -> Conflicted
//
// Every path back to Uploading passes a due time: a job that returns Again
// with no delay or Conflict more than MaxImmediate times in a row is backed
// off like a failure, so no job can spin.
//
// # Waiting
//
// Sync waits until every change made before it was called is covered by a
// successful attempt, and returns at once with the error of a job that has
// failed for good, or with the error of a retryable failure of an attempt
// that started after it was called: an fsync gets an answer, never a wait
// without end. WaitSettled returns once nothing is left but failed jobs.
//
// # Locking
//
// Scheduler.mu is a leaf: it is never held while the Runner runs or while
// a callback is made.
package writeback
