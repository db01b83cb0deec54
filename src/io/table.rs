//! A slot table for streams: ids carry a generation so that an id outlives its stream safely
//! (a stale id finds nothing instead of a newer stream in the same slot).

use super::StreamId;

pub(crate) struct StreamTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for StreamTable<T> {
    fn default() -> Self {
        StreamTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> StreamTable<T> {
    pub(crate) fn insert(&mut self, value: T) -> StreamId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            return StreamId {
                index,
                generation: slot.generation,
            };
        }
        let index = u32::try_from(self.slots.len()).expect("more than 2^32 streams");
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        StreamId {
            index,
            generation: 0,
        }
    }

    pub(crate) fn get(&self, id: StreamId) -> Option<&T> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: StreamId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub(crate) fn remove(&mut self, id: StreamId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        // Bumping the generation is what makes every copy of the old id stale.
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.live -= 1;
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn ids(&self) -> Vec<StreamId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.value.is_some())
            .map(|(index, slot)| StreamId {
                index: index as u32,
                generation: slot.generation,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_find_nothing_after_reuse() {
        let mut table = StreamTable::default();
        let a = table.insert("a");
        assert_eq!(table.remove(a), Some("a"));
        let b = table.insert("b");
        assert_eq!(a.index, b.index, "slot is reused");
        assert_eq!(table.get(a), None);
        assert_eq!(table.remove(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        assert_eq!(table.len(), 1);
        assert_eq!(table.ids(), vec![b]);
    }
}
