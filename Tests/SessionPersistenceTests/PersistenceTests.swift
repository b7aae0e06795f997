import Logging
import SessionPersistence
import SessionStore
import Testing
