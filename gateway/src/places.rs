//! Places for long-lived requests (uploads streaming in, event streams), counted per gateway
//! process and per user, so that one process's memory is bounded and one user cannot take
//! every place. The counts are per process: behind a load balancer, N replicas admit N times
//! as many, each within its own memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tunewire_contract::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_process: usize,
    pub per_user: usize,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The user holds this many places, their share.
    User(usize),
    /// The process holds its limit.
    Process(usize),
}

pub struct Places {
    limits: Limits,
    process: Arc<Semaphore>,
    users: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One place, given back when dropped.
pub struct Place {
    _process: OwnedSemaphorePermit,
    user: UserId,
    users: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Places {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            process: Arc::new(Semaphore::new(limits.per_process.max(1))),
            users: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn take(&self, user: &UserId) -> Result<Place, Full> {
        let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = users.get(user).copied().unwrap_or(0);
        if count >= self.limits.per_user {
            return Err(Full::User(count));
        }
        let process = self.process.clone().try_acquire_owned().map_err(|_| Full::Process(self.limits.per_process))?;
        users.insert(*user, count + 1);
        Ok(Place { _process: process, user: *user, users: self.users.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_at_most_their_share_and_all_together_the_process_cap() {
        let places = Places::new(Limits { per_process: 3, per_user: 2 });
        let (ann, bob, cy) = (UserId::new(), UserId::new(), UserId::new());
        let ann_places: Vec<_> = (0..2).filter_map(|_| places.take(&ann).ok()).collect();
        assert_eq!(ann_places.len(), 2);
        assert_eq!(places.take(&ann).err(), Some(Full::User(2)));
        let bob_place = places.take(&bob);
        assert!(bob_place.is_ok());
        assert_eq!(places.take(&cy).err(), Some(Full::Process(3)), "the process is full");
        drop(ann_places);
        assert!(places.take(&ann).is_ok(), "places are given back");
        assert!(places.users.lock().map(|u| u.len()).unwrap_or(0) <= 2, "users without places are forgotten");
    }
}
