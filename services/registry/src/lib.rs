//! The department registry service: `DepartmentRegistryService` (regions, departments, groups,
//! responsibilities, principals and API keys). Not served yet: the registry issue implements it
//! (calls return UNIMPLEMENTED until then, as the proto says). Until then the organisation comes
//! straight from the city file.
